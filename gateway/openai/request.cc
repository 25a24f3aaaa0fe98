#include "gateway/openai/request.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace tessera::gateway {

namespace {

using json = nlohmann::json;

constexpr uint32_t kMaxN = 128;
constexpr uint32_t kMaxTopLogprobs = 20;
constexpr size_t kMaxStops = 4;

// Thrown inside the parser only; the entry points turn it into the ApiError result.
struct Invalid {
  ApiError error;
};

[[noreturn]] void fail(const std::string& param, const std::string& message) {
  throw Invalid{ApiError{400, "invalid_request_error", message, param, ""}};
}

std::string describe(double v) {
  std::string s = std::to_string(v);
  s.erase(s.find_last_not_of('0') + 1);
  if (!s.empty() && s.back() == '.') s.pop_back();
  return s;
}

// Reads typed, range-checked parameters out of the body object. A key that is absent or
// null counts as not given.
class Body {
 public:
  explicit Body(const json& j) : j_(j) {}
  const json* get(const char* key) const {
    auto it = j_.find(key);
    return it == j_.end() || it->is_null() ? nullptr : &*it;
  }
  std::optional<double> number(const char* key, double lo, double hi, bool lo_open = false) const {
    const json* v = get(key);
    if (!v) return std::nullopt;
    if (!v->is_number()) fail(key, std::string("'") + key + "' must be a number");
    const double x = v->get<double>();
    if (!std::isfinite(x) || x < lo || x > hi || (lo_open && x == lo)) {
      fail(key, std::string("'") + key + "' is " + describe(x) + "; it must be in " + (lo_open ? "(" : "[") + describe(lo) +
                    ", " + describe(hi) + "]");
    }
    return x;
  }
  std::optional<int64_t> integer(const char* key, int64_t lo, int64_t hi) const {
    const json* v = get(key);
    if (!v) return std::nullopt;
    if (!v->is_number_integer()) fail(key, std::string("'") + key + "' must be an integer");
    auto out_of_range = [&](const std::string& got) {
      fail(key, std::string("'") + key + "' is " + got + "; it must be in [" + std::to_string(lo) + ", " +
                    std::to_string(hi) + "]");
    };
    // JSON numbers parsed as unsigned may not fit int64 at all.
    if (v->is_number_unsigned() && v->get<uint64_t>() > static_cast<uint64_t>(hi)) {
      out_of_range(std::to_string(v->get<uint64_t>()));
    }
    const int64_t x = v->get<int64_t>();
    if (x < lo || x > hi) out_of_range(std::to_string(x));
    return x;
  }
  std::optional<bool> boolean(const char* key) const {
    const json* v = get(key);
    if (!v) return std::nullopt;
    if (!v->is_boolean()) fail(key, std::string("'") + key + "' must be a boolean");
    return v->get<bool>();
  }
  std::optional<std::string> string(const char* key) const {
    const json* v = get(key);
    if (!v) return std::nullopt;
    if (!v->is_string()) fail(key, std::string("'") + key + "' must be a string");
    return v->get<std::string>();
  }

 private:
  const json& j_;
};

json parse_object(std::string_view body) {
  json j = json::parse(body.begin(), body.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    throw Invalid{ApiError{400, "invalid_request_error",
                           "the request body is not valid JSON", "", "invalid_json"}};
  }
  if (!j.is_object()) throw Invalid{ApiError{400, "invalid_request_error", "the request body must be a JSON object", "", ""}};
  return j;
}

std::vector<int32_t> token_ids(const json& arr, const char* param) {
  std::vector<int32_t> ids;
  ids.reserve(arr.size());
  for (const json& t : arr) {
    if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() > std::numeric_limits<int32_t>::max()) {
      fail(param, std::string("'") + param + "' token ids must be non-negative integers");
    }
    ids.push_back(static_cast<int32_t>(t.get<int64_t>()));
  }
  return ids;
}

// The parameters both endpoints share. `max_tokens_key` is the preferred name.
GenerationOptions common_options(const Body& b, bool chat) {
  GenerationOptions o;
  auto model = b.string("model");
  if (!model) fail("model", "you must provide a model parameter");
  o.model = *model;
  v1::SamplingParams& s = o.sampling;
  std::optional<int64_t> max_tokens = chat ? b.integer("max_completion_tokens", 1, UINT32_MAX) : std::nullopt;
  if (!max_tokens) max_tokens = b.integer("max_tokens", 1, UINT32_MAX);
  if (max_tokens) {
    o.max_tokens = static_cast<uint32_t>(*max_tokens);
    s.set_max_tokens(*o.max_tokens);
  } else if (!chat) {
    o.max_tokens = 16;  // OpenAI's default for completions
    s.set_max_tokens(16);
  }
  if (auto v = b.number("temperature", 0, 2)) s.set_temperature(static_cast<float>(*v));
  if (auto v = b.number("top_p", 0, 1, /*lo_open=*/true)) s.set_top_p(static_cast<float>(*v));
  if (auto v = b.integer("top_k", -1, 1 << 30)) s.set_top_k(static_cast<int32_t>(*v <= 0 ? 0 : *v));
  if (auto v = b.number("min_p", 0, 1)) s.set_min_p(static_cast<float>(*v));
  if (auto v = b.number("repetition_penalty", 0, 2, /*lo_open=*/true)) s.set_repetition_penalty(static_cast<float>(*v));
  if (auto v = b.number("presence_penalty", -2, 2)) s.set_presence_penalty(static_cast<float>(*v));
  if (auto v = b.number("frequency_penalty", -2, 2)) s.set_frequency_penalty(static_cast<float>(*v));
  if (const json* v = b.get("seed")) {
    if (!v->is_number_integer()) fail("seed", "'seed' must be an integer");
    s.set_seed(v->is_number_unsigned() ? v->get<uint64_t>() : static_cast<uint64_t>(v->get<int64_t>()));
  }
  if (auto v = b.integer("n", 1, kMaxN)) o.n = static_cast<uint32_t>(*v);
  if (const json* v = b.get("stop")) {
    if (v->is_string()) {
      o.stop.push_back(v->get<std::string>());
    } else if (v->is_array()) {
      if (v->size() > kMaxStops) fail("stop", "'stop' has " + std::to_string(v->size()) + " strings; at most 4 are allowed");
      for (const json& x : *v) {
        if (!x.is_string()) fail("stop", "'stop' must be a string or a list of strings");
        o.stop.push_back(x.get<std::string>());
      }
    } else {
      fail("stop", "'stop' must be a string or a list of strings");
    }
    for (const std::string& x : o.stop) {
      if (x.empty()) fail("stop", "'stop' strings must not be empty");
    }
  }
  if (const json* v = b.get("logit_bias")) {
    if (!v->is_object()) fail("logit_bias", "'logit_bias' must be an object of token id → bias");
    for (auto it = v->begin(); it != v->end(); ++it) {
      int64_t id = -1;
      try {
        size_t used = 0;
        id = std::stoll(it.key(), &used);
        if (used != it.key().size()) id = -1;
      } catch (...) {
        id = -1;
      }
      if (id < 0 || id > std::numeric_limits<int32_t>::max()) {
        fail("logit_bias", "'logit_bias' keys must be token ids; got '" + it.key() + "'");
      }
      if (!it.value().is_number() || std::abs(it.value().get<double>()) > 100) {
        fail("logit_bias", "'logit_bias' values must be numbers in [-100, 100]");
      }
      (*s.mutable_logit_bias())[static_cast<int32_t>(id)] = static_cast<float>(it.value().get<double>());
    }
  }
  if (auto v = b.integer("min_tokens", 0, UINT32_MAX)) {
    if (o.max_tokens && *v > *o.max_tokens) {
      fail("min_tokens", "'min_tokens' (" + std::to_string(*v) + ") must not exceed max_tokens (" +
                             std::to_string(*o.max_tokens) + ")");
    }
    s.set_min_tokens(static_cast<uint32_t>(*v));
  }
  if (auto v = b.boolean("ignore_eos")) s.set_ignore_eos(*v);
  if (const json* v = b.get("stop_token_ids")) {
    if (!v->is_array()) fail("stop_token_ids", "'stop_token_ids' must be a list of token ids");
    for (int32_t id : token_ids(*v, "stop_token_ids")) s.add_stop_token_ids(id);
  }
  if (auto v = b.boolean("skip_special_tokens")) o.skip_special_tokens = *v;
  s.set_skip_special_tokens(o.skip_special_tokens);
  for (const std::string& x : o.stop) s.add_stop(x);
  if (auto v = b.boolean("stream")) o.stream = *v;
  if (const json* v = b.get("stream_options")) {
    if (!v->is_object()) fail("stream_options", "'stream_options' must be an object");
    if (!o.stream) fail("stream_options", "'stream_options' is only allowed when 'stream' is true");
    if (auto u = Body(*v).boolean("include_usage")) o.include_usage = *u;
  }
  if (auto v = b.string("user")) o.user = *v;
  if (auto v = b.integer("best_of", 0, kMaxN); v && *v > 1) {
    fail("best_of", "'best_of' above 1 is not supported; use 'n'");
  }
  return o;
}

// Runs a parser over a body object, turning what it throws into the ApiError result.
template <typename T, typename F>
Parsed<T> guarded_object(const json& j, F parse) {
  try {
    if (!j.is_object()) fail("", "the request body must be a JSON object");
    return parse(j);
  } catch (const Invalid& e) {
    return e.error;
  } catch (const json::exception& e) {
    return ApiError{400, "invalid_request_error", std::string("malformed request: ") + e.what(), "", ""};
  }
}

template <typename T, typename F>
Parsed<T> guarded(std::string_view body, F parse) {
  json j;
  try {
    j = parse_object(body);
  } catch (const Invalid& e) {
    return e.error;
  }
  return guarded_object<T>(j, parse);
}

}  // namespace

std::string ApiError::to_json() const {
  json e = {{"message", message}, {"type", type}, {"param", nullptr}, {"code", nullptr}};
  if (!param.empty()) e["param"] = param;
  if (!code.empty()) e["code"] = code;
  return json{{"error", e}}.dump();
}

Parsed<CompletionRequest> parse_completion_request(std::string_view body) {
  return guarded<CompletionRequest>(body, [](const json& j) -> Parsed<CompletionRequest> {
    const Body b(j);
    CompletionRequest r;
    r.options = common_options(b, /*chat=*/false);
    if (auto v = b.integer("logprobs", 0, kMaxTopLogprobs)) {
      r.options.sampling.set_logprobs(true);
      r.options.sampling.set_top_logprobs(static_cast<uint32_t>(*v));
    }
    if (auto v = b.boolean("echo")) r.echo = *v;
    const json* p = b.get("prompt");
    if (!p) fail("prompt", "you must provide a prompt");
    auto empty = [] { fail("prompt", "'prompt' must not be empty"); };
    if (p->is_string()) {
      r.prompts.push_back({p->get<std::string>(), {}});
    } else if (p->is_array() && !p->empty() && (*p)[0].is_number()) {
      r.prompts.push_back({std::nullopt, token_ids(*p, "prompt")});
    } else if (p->is_array() && !p->empty()) {
      for (const json& x : *p) {
        if (x.is_string()) {
          r.prompts.push_back({x.get<std::string>(), {}});
        } else if (x.is_array()) {
          if (x.empty()) empty();
          r.prompts.push_back({std::nullopt, token_ids(x, "prompt")});
        } else {
          fail("prompt", "'prompt' must be a string, a list of strings, a list of token ids or a list of lists of token ids");
        }
      }
    } else if (p->is_array()) {
      empty();
    } else {
      fail("prompt", "'prompt' must be a string, a list of strings, a list of token ids or a list of lists of token ids");
    }
    for (const PromptInput& in : r.prompts) {
      if (in.text && in.text->empty()) empty();
    }
    return r;
  });
}

Parsed<ChatRequest> parse_chat_request(std::string_view body) {
  return guarded<ChatRequest>(body, [](const json& j) { return parse_chat_request_json(j); });
}

Parsed<ChatRequest> parse_chat_request_json(const nlohmann::json& body) {
  return guarded_object<ChatRequest>(body, [](const json& j) -> Parsed<ChatRequest> {
    const Body b(j);
    ChatRequest r;
    r.options = common_options(b, /*chat=*/true);
    const bool logprobs = b.boolean("logprobs").value_or(false);
    const auto top = b.integer("top_logprobs", 0, kMaxTopLogprobs);
    if (top && !logprobs) fail("top_logprobs", "'top_logprobs' needs 'logprobs' set to true");
    if (logprobs) {
      r.options.sampling.set_logprobs(true);
      r.options.sampling.set_top_logprobs(static_cast<uint32_t>(top.value_or(0)));
    }
    if (auto v = b.boolean("add_generation_prompt")) r.add_generation_prompt = *v;
    if (const json* t = b.get("tools")) {
      if (!t->is_array()) fail("tools", "'tools' must be a list of tool definitions");
      for (const json& tool : *t) {
        if (!tool.is_object() || !tool.contains("function") || !tool["function"].is_object()) {
          fail("tools", "each tool must be an object with a 'function' object");
        }
      }
      r.tools = *t;
    }
    const json* m = b.get("messages");
    if (!m || !m->is_array() || m->empty()) fail("messages", "'messages' must be a non-empty list of messages");
    for (size_t i = 0; i < m->size(); ++i) {
      const json& msg = (*m)[i];
      const std::string where = "messages[" + std::to_string(i) + "]";
      if (!msg.is_object()) fail(where, "'" + where + "' must be an object");
      auto role = Body(msg).string("role");
      static const char* const kRoles[] = {"system", "developer", "user", "assistant", "tool"};
      if (!role || std::find(std::begin(kRoles), std::end(kRoles), *role) == std::end(kRoles)) {
        fail(where + ".role", "'" + where + ".role' must be one of system, developer, user, assistant, tool");
      }
      ChatMessage out;
      out.role = *role;
      out.raw = msg;
      const json* content = Body(msg).get("content");
      if (!content) {
        if (*role != "assistant" || !Body(msg).get("tool_calls")) {
          fail(where + ".content", "'" + where + ".content' is required");
        }
      } else if (content->is_string()) {
        out.content = content->get<std::string>();
      } else if (content->is_array()) {
        for (const json& part : *content) {
          const std::string type = part.is_object() ? part.value("type", "") : "";
          if (type != "text") {
            fail(where + ".content", "'" + where + ".content' parts of type '" + type +
                                         "' are not supported (text only)");
          }
          if (!part.contains("text") || !part["text"].is_string()) {
            fail(where + ".content", "'" + where + ".content' text parts need a string 'text'");
          }
          out.content += part["text"].get<std::string>();
        }
        out.raw["content"] = out.content;  // templates expect a string
      } else {
        fail(where + ".content", "'" + where + ".content' must be a string or a list of content parts");
      }
      if (*role == "tool" && !Body(msg).string("tool_call_id")) {
        fail(where + ".tool_call_id", "'" + where + ".tool_call_id' is required for tool messages");
      }
      r.messages.push_back(std::move(out));
    }
    return r;
  });
}


Parsed<GenerateApiRequest> parse_generate_request(std::string_view body) {
  return guarded<GenerateApiRequest>(body, [](const json& j) -> Parsed<GenerateApiRequest> {
    const Body b(j);
    GenerateApiRequest r;
    auto inputs = b.string("inputs");
    if (!inputs || inputs->empty()) fail("inputs", "'inputs' must be a non-empty string");
    r.inputs = *inputs;
    static const json kNoParameters = json::object();
    const json* params = b.get("parameters");
    if (params && !params->is_object()) fail("parameters", "'parameters' must be an object");
    const Body p(params ? *params : kNoParameters);
    GenerationOptions& o = r.options;
    v1::SamplingParams& s = o.sampling;
    o.max_tokens = static_cast<uint32_t>(p.integer("max_new_tokens", 1, UINT32_MAX).value_or(16));
    s.set_max_tokens(*o.max_tokens);
    if (auto v = p.integer("min_new_tokens", 0, *o.max_tokens)) s.set_min_tokens(static_cast<uint32_t>(*v));
    // LightLLM: do_sample false is greedy whatever the temperature says.
    const bool do_sample = p.boolean("do_sample").value_or(true);
    s.set_do_sample(do_sample);
    if (auto v = p.number("temperature", 0, 2)) s.set_temperature(static_cast<float>(*v));
    if (!do_sample) s.set_temperature(0);
    if (auto v = p.number("top_p", 0, 1, /*lo_open=*/true)) s.set_top_p(static_cast<float>(*v));
    if (auto v = p.integer("top_k", -1, 1 << 30)) s.set_top_k(static_cast<int32_t>(*v <= 0 ? 0 : *v));
    if (auto v = p.number("repetition_penalty", 0, 2, /*lo_open=*/true)) s.set_repetition_penalty(static_cast<float>(*v));
    if (auto v = p.number("presence_penalty", -2, 2)) s.set_presence_penalty(static_cast<float>(*v));
    if (auto v = p.number("frequency_penalty", -2, 2)) s.set_frequency_penalty(static_cast<float>(*v));
    if (auto v = p.integer("seed", 0, std::numeric_limits<int64_t>::max())) s.set_seed(static_cast<uint64_t>(*v));
    if (auto v = p.boolean("ignore_eos")) s.set_ignore_eos(*v);
    if (auto v = p.boolean("skip_special_tokens")) o.skip_special_tokens = *v;
    s.set_skip_special_tokens(o.skip_special_tokens);
    if (auto v = p.integer("best_of", 0, kMaxN); v && *v > 1) {
      fail("parameters.best_of", "'best_of' above 1 is not supported");
    }
    if (const json* v = p.get("stop_sequences")) {
      if (v->is_string()) {
        o.stop.push_back(v->get<std::string>());
      } else if (v->is_array()) {
        for (const json& x : *v) {
          if (!x.is_string() || x.get<std::string>().empty()) {
            fail("parameters.stop_sequences", "'stop_sequences' must be a string or a list of non-empty strings");
          }
          o.stop.push_back(x.get<std::string>());
        }
      } else {
        fail("parameters.stop_sequences", "'stop_sequences' must be a string or a list of non-empty strings");
      }
      if (o.stop.size() > kMaxStops) fail("parameters.stop_sequences", "at most 4 stop sequences are allowed");
    }
    for (const std::string& x : o.stop) s.add_stop(x);
    return r;
  });
}

}  // namespace tessera::gateway
