#include "gateway/openai/response.h"

namespace tessera::gateway {

namespace {

using json = nlohmann::json;

json optional_text(const std::optional<std::string>& s) { return s ? json(*s) : json(nullptr); }

// OpenAI's `bytes`: the token's raw bytes (which may be part of a character).
json bytes_of(const std::string& token, const std::string& raw) {
  json b = json::array();
  for (unsigned char c : raw.empty() ? token : raw) b.push_back(static_cast<int>(c));
  return b;
}

json head_json(const ResponseHead& head, const char* object) {
  return {{"id", head.id}, {"object", object}, {"created", head.created}, {"model", head.model}};
}

}  // namespace

std::optional<std::string> finish_reason_text(v1::FinishReason reason) {
  switch (reason) {
    case v1::FINISH_REASON_EOS:
    case v1::FINISH_REASON_STOP_TOKEN:
    case v1::FINISH_REASON_STOP_STRING: return "stop";
    case v1::FINISH_REASON_LENGTH:
    case v1::FINISH_REASON_CONTEXT_LENGTH: return "length";
    case v1::FINISH_REASON_ABORTED: return "abort";
    default: return std::nullopt;
  }
}

json usage_json(const UsageCounts& u) {
  return {{"prompt_tokens", u.prompt_tokens},
          {"completion_tokens", u.completion_tokens},
          {"total_tokens", u.prompt_tokens + u.completion_tokens},
          {"prompt_tokens_details", {{"cached_tokens", u.cached_prompt_tokens}}}};
}

json completion_logprobs_json(const std::vector<TokenLogprobText>& tokens) {
  json out = {{"tokens", json::array()}, {"token_logprobs", json::array()}, {"top_logprobs", json::array()},
              {"text_offset", json::array()}};
  for (const TokenLogprobText& t : tokens) {
    out["tokens"].push_back(t.token);
    out["token_logprobs"].push_back(t.logprob);
    json top = json::object();
    for (const LogprobAlternative& alt : t.top) {
      if (!top.contains(alt.token)) top[alt.token] = alt.logprob;  // two ids may share a text: keep the likelier
    }
    out["top_logprobs"].push_back(std::move(top));
    out["text_offset"].push_back(t.text_offset);
  }
  return out;
}

json chat_logprobs_json(const std::vector<TokenLogprobText>& tokens) {
  json content = json::array();
  for (const TokenLogprobText& t : tokens) {
    json top = json::array();
    for (const LogprobAlternative& alt : t.top) {
      top.push_back({{"token", alt.token}, {"logprob", alt.logprob}, {"bytes", bytes_of(alt.token, alt.bytes)}});
    }
    content.push_back({{"token", t.token}, {"logprob", t.logprob}, {"bytes", bytes_of(t.token, t.bytes)}, {"top_logprobs", top}});
  }
  return {{"content", content}};
}

std::string completion_body(const ResponseHead& head, const std::vector<Choice>& choices, const UsageCounts& usage) {
  json j = head_json(head, "text_completion");
  j["choices"] = json::array();
  for (const Choice& c : choices) {
    j["choices"].push_back({{"index", c.index},
                            {"text", c.text},
                            {"logprobs", c.logprobs ? *c.logprobs : json(nullptr)},
                            {"finish_reason", optional_text(c.finish_reason)}});
  }
  j["usage"] = usage_json(usage);
  return j.dump();
}

std::string chat_body(const ResponseHead& head, const std::vector<Choice>& choices, const UsageCounts& usage) {
  json j = head_json(head, "chat.completion");
  j["choices"] = json::array();
  for (const Choice& c : choices) {
    j["choices"].push_back({{"index", c.index},
                            {"message", {{"role", "assistant"}, {"content", c.text}}},
                            {"logprobs", c.logprobs ? *c.logprobs : json(nullptr)},
                            {"finish_reason", optional_text(c.finish_reason)}});
  }
  j["usage"] = usage_json(usage);
  return j.dump();
}

std::string completion_chunk(const ResponseHead& head, const Choice& c) {
  json j = head_json(head, "text_completion");
  j["choices"] = json::array({{{"index", c.index},
                               {"text", c.text},
                               {"logprobs", c.logprobs ? *c.logprobs : json(nullptr)},
                               {"finish_reason", optional_text(c.finish_reason)}}});
  return j.dump();
}

std::string chat_chunk(const ResponseHead& head, const Choice& c, bool first) {
  json delta = json::object();
  if (first) delta["role"] = "assistant";
  if (!c.text.empty() || first) delta["content"] = c.text;
  json j = head_json(head, "chat.completion.chunk");
  j["choices"] = json::array({{{"index", c.index},
                               {"delta", delta},
                               {"logprobs", c.logprobs ? *c.logprobs : json(nullptr)},
                               {"finish_reason", optional_text(c.finish_reason)}}});
  return j.dump();
}

std::string usage_chunk(const ResponseHead& head, bool chat, const UsageCounts& usage) {
  json j = head_json(head, chat ? "chat.completion.chunk" : "text_completion");
  j["choices"] = json::array();
  j["usage"] = usage_json(usage);
  return j.dump();
}

std::string sse_event(std::string_view json_text) {
  std::string out;
  out.reserve(json_text.size() + 8);
  out.append("data: ").append(json_text).append("\n\n");
  return out;
}

}  // namespace tessera::gateway
