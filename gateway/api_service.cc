#include "gateway/api_service.h"

#include <cctype>
#include <random>

#include "gateway/response_sinks.h"

namespace tessera::gateway {

namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

int64_t unix_seconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

ApiError bad_request(std::string message, std::string param = "") {
  return ApiError{400, "invalid_request_error", std::move(message), std::move(param), ""};
}

http::Response text(int status, std::string body) { return {status, "text/plain; charset=utf-8", std::move(body), {}}; }

// A parsed JSON object body, or the 400 that says why not.
std::variant<json, ApiError> json_object(const std::string& body) {
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return ApiError{400, "invalid_request_error", "the request body is not valid JSON", "", "invalid_json"};
  if (!j.is_object()) return bad_request("the request body must be a JSON object");
  return j;
}

// The n samples of one prompt. They must differ: a given seed is spread over them (the
// k-th draws with seed + k).
std::vector<ChoiceSpec> n_choices(const ChoiceSpec& spec, uint32_t n) {
  std::vector<ChoiceSpec> out(n, spec);
  for (uint32_t k = 1; k < n; ++k) {
    if (out[k].sampling.has_seed()) out[k].sampling.set_seed(spec.sampling.seed() + k);
  }
  return out;
}

}  // namespace

// Released (the slot freed for the cap) when the answer ends; destroyed when the job that
// holds it is, after its sink, its router calls and the HTTP exchange are gone. Its
// destructor is the last touch of the service by a request: wait_idle waits for it.
struct ApiService::Admission {
  ApiService* service = nullptr;
  uint64_t job_key = 0;  // in jobs_, once the job started
  bool released = false;  // under the service's mutex
  void release() {
    std::lock_guard lock(service->mutex_);
    release_locked();
  }
  ~Admission() {
    std::lock_guard lock(service->mutex_);
    release_locked();
    --service->num_live_;
    service->idle_.notify_all();
  }

 private:
  void release_locked() {
    if (released) return;
    released = true;
    if (job_key != 0) service->jobs_.erase(job_key);
    --service->num_in_flight_;
    service->metrics_.in_flight().dec();
  }
};

ApiService::ApiService(ApiOptions options, ModelText model, RouterPool& pool, metrics::Registry& registry)
    : options_(std::move(options)),
      model_(std::move(model)),
      pool_(pool),
      registry_(registry),
      metrics_(registry),
      id_salt_(std::random_device{}() * 0x9E3779B97F4A7C15ull + std::random_device{}()) {}

std::string ApiService::new_id(const char* prefix) {
  uint64_t x = id_salt_ ^ (next_id_++ * 0xBF58476D1CE4E5B9ull);
  x ^= x >> 31;
  x *= 0x94D049BB133111EBull;
  x ^= x >> 29;
  char buf[40];
  std::snprintf(buf, sizeof buf, "%s-%016llx", prefix, static_cast<unsigned long long>(x));
  return buf;
}

void ApiService::answer(const std::shared_ptr<http::Exchange>& ex, const std::string& endpoint, http::Response response) {
  metrics_.count_request(endpoint, response.status);
  ex->respond(std::move(response));
}

void ApiService::handle(const std::shared_ptr<http::Exchange>& ex) {
  const http::Request& req = ex->request();
  const std::string& path = req.path;
  const bool get = req.method == "GET" || req.method == "HEAD";
  const bool post = req.method == "POST";
  // Operational endpoints: no key, no admission.
  if (path == "/health" || path == "/ready" || path == "/metrics") {
    if (!get) return ex->respond(text(405, "method not allowed\n"));
    if (path == "/metrics") return ex->respond(metrics_response());
    if (path == "/health") {
      return ex->respond(pool_.healthy() ? text(200, "ok\n") : text(503, "no router behind this gateway makes progress\n"));
    }
    if (!admitting_) return ex->respond(text(503, "draining\n"));
    return ex->respond(pool_.any_ready() ? text(200, "ready\n") : text(503, "no router is ready\n"));
  }
  if (!options_.api_keys.empty()) {
    const std::string_view auth = req.header("authorization");
    const std::string_view bearer = "bearer ";
    auto lower = [](std::string_view s) {
      std::string out(s);
      for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      return out;
    };
    const bool ok = lower(auth.substr(0, bearer.size())) == bearer &&
                    std::find(options_.api_keys.begin(), options_.api_keys.end(), auth.substr(bearer.size())) !=
                        options_.api_keys.end();
    if (!ok) {
      http::Response r = error_response(ApiError{401, "invalid_request_error",
                                                 auth.empty() ? "missing API key: send 'Authorization: Bearer <key>'"
                                                              : "incorrect API key",
                                                 "", "invalid_api_key"});
      r.headers.emplace_back("WWW-Authenticate", "Bearer");
      return answer(ex, "unauthorized", std::move(r));
    }
  }
  struct Route {
    const char* path;
    bool post;
    void (ApiService::*handler)(const std::shared_ptr<http::Exchange>&);
  };
  static const Route kRoutes[] = {
      {"/v1/completions", true, &ApiService::completions},
      {"/v1/chat/completions", true, &ApiService::chat_completions},
      {"/v1/tokenize", true, &ApiService::tokenize},
      {"/tokenize", true, &ApiService::tokenize},
      {"/v1/detokenize", true, &ApiService::detokenize},
      {"/detokenize", true, &ApiService::detokenize},
      {"/v1/models", false, &ApiService::models},
  };
  for (const Route& r : kRoutes) {
    if (path != r.path) continue;
    if (r.post ? !post : !get) {
      return answer(ex, path, error_response({405, "invalid_request_error", "use " + std::string(r.post ? "POST" : "GET") + " for " + path, "", "method_not_allowed"}));
    }
    return (this->*r.handler)(ex);
  }
  if (path == "/generate" || path == "/generate_stream") {
    if (!post) return answer(ex, path, error_response({405, "invalid_request_error", "use POST for " + path, "", "method_not_allowed"}));
    return generate(ex, path == "/generate_stream");
  }
  if (path.rfind("/v1/models/", 0) == 0) {
    if (!get) return answer(ex, "/v1/models", error_response({405, "invalid_request_error", "use GET for " + path, "", "method_not_allowed"}));
    return models(ex);
  }
  answer(ex, "other", error_response({404, "invalid_request_error", "no endpoint " + req.method + " " + path, "", "not_found"}));
}

http::Response ApiService::metrics_response() {
  for (const RouterPool::ReplicaStatus& s : pool_.statuses()) metrics_.set_router_ready(s.address, s.ready);
  return {200, std::string(metrics::kExpositionContentType), registry_.expose(), {}};
}

std::optional<uint32_t> ApiService::context_length() const {
  auto model = pool_.model();
  if (!model || model->context_length_tokens() == 0) return std::nullopt;
  uint32_t n = model->context_length_tokens();
  if (options_.max_model_len_tokens > 0) n = std::min(n, options_.max_model_len_tokens);
  return n;
}

std::optional<ApiError> ApiService::check_model(const std::string& model) const {
  if (model == options_.served_name) return std::nullopt;
  return ApiError{404, "invalid_request_error", "the model '" + model + "' does not exist; this server serves '" + options_.served_name + "'",
                  "model", "model_not_found"};
}

std::optional<ApiError> ApiService::check_token_ids(const std::vector<int32_t>& ids, const char* param) const {
  const size_t vocab = model_.tokenizer.vocab_size();
  for (int32_t id : ids) {
    if (id < 0 || static_cast<size_t>(id) >= vocab) {
      return bad_request("token id " + std::to_string(id) + " is outside the vocabulary (0.." + std::to_string(vocab - 1) + ")",
                         param);
    }
  }
  return std::nullopt;
}

std::optional<ApiError> ApiService::fit_context(size_t num_prompt_tokens, std::optional<uint32_t> max_tokens,
                                                v1::SamplingParams& sampling) const {
  const auto context = context_length();
  if (!context) return ApiError{503, "service_unavailable", "no router has described the model yet; retry later", "", "unavailable"};
  if (num_prompt_tokens == 0) return bad_request("the prompt is empty (no tokens)", "prompt");
  if (max_tokens) {
    if (num_prompt_tokens + *max_tokens > *context) {
      return bad_request("this model's context is " + std::to_string(*context) + " tokens, but " +
                             std::to_string(num_prompt_tokens + *max_tokens) + " were requested (" +
                             std::to_string(num_prompt_tokens) + " in the prompt, " + std::to_string(*max_tokens) +
                             " to generate); shorten the prompt or lower max_tokens",
                         "max_tokens");
    }
  } else {
    if (num_prompt_tokens >= *context) {
      return bad_request("this model's context is " + std::to_string(*context) + " tokens, but the prompt has " +
                             std::to_string(num_prompt_tokens) + "; shorten the prompt",
                         "messages");
    }
    sampling.set_max_tokens(static_cast<uint32_t>(*context - num_prompt_tokens));
  }
  return std::nullopt;
}

std::variant<std::shared_ptr<ApiService::Admission>, ApiError> ApiService::admit() {
  if (!admitting_) {
    return ApiError{503, "service_unavailable", "the server is shutting down; retry on another replica", "", "draining"};
  }
  std::lock_guard lock(mutex_);
  if (num_in_flight_ >= static_cast<int64_t>(options_.max_concurrent_requests)) {
    return ApiError{429, "rate_limit_error",
                    "the server is at its limit of " + std::to_string(options_.max_concurrent_requests) +
                        " concurrent requests; retry later",
                    "", "overloaded"};
  }
  ++num_in_flight_;
  ++num_live_;
  metrics_.in_flight().inc();
  auto slot = std::make_shared<Admission>();
  slot->service = this;
  return slot;
}

void ApiService::start(const std::shared_ptr<http::Exchange>& ex, const std::string& endpoint, JobOptions options,
                       const v1::SamplingParams& sampling, std::vector<ChoiceSpec> choices, const SinkFactory& make_sink) {
  metrics_.observe_tokenize(std::chrono::duration<double>(Clock::now() - options.arrival).count());
  const std::vector<int32_t> stop_ids(sampling.stop_token_ids().begin(), sampling.stop_token_ids().end());
  std::vector<int32_t> biased;
  for (const auto& [id, bias] : sampling.logit_bias()) biased.push_back(id);
  if (auto e = check_token_ids(stop_ids, "stop_token_ids")) return answer(ex, endpoint, error_response(*e));
  if (auto e = check_token_ids(biased, "logit_bias")) return answer(ex, endpoint, error_response(*e));
  auto slot = admit();
  if (auto* e = std::get_if<ApiError>(&slot)) return answer(ex, endpoint, error_response(*e));
  auto admission = std::get<std::shared_ptr<Admission>>(slot);
  auto sink = make_sink({ex, &metrics_, endpoint, [admission] { admission->release(); }});
  options.timeout = options_.request_timeout;
  options.lease = admission;
  auto job = GenerationJob::start(pool_, model_.tokenizer, &metrics_, std::move(options), std::move(choices), std::move(sink));
  const uint64_t key = next_id_++;
  {
    std::lock_guard lock(mutex_);
    if (!admission->released) {  // the job may be over already (no router was ready)
      admission->job_key = key;
      jobs_[key] = job;
    }
  }
  std::weak_ptr<GenerationJob> weak = job;
  ex->on_client_gone([weak] {
    if (auto j = weak.lock()) j->cancel({499, "client_closed", "the client closed the connection", "", ""});
  });
}

void ApiService::start_openai(const std::shared_ptr<http::Exchange>& ex, const std::string& endpoint, ApiFlavor flavor,
                              const GenerationOptions& options, Clock::time_point arrival,
                              std::vector<ChoiceSpec> choices, std::vector<std::string> echo) {
  OpenAiSinkOptions so;
  so.flavor = flavor;
  so.head = {new_id(flavor == ApiFlavor::kChat ? "chatcmpl" : "cmpl"), unix_seconds(), options.model};
  so.stream = options.stream;
  so.include_usage = options.include_usage;
  so.logprobs = options.sampling.logprobs();
  so.n = options.n;
  so.echo_prefix = std::move(echo);
  JobOptions jo;
  jo.request_id = so.head.id;
  jo.model = options.model;
  jo.stop = options.stop;
  jo.skip_special_tokens = options.skip_special_tokens;
  jo.logprobs = so.logprobs;
  jo.arrival = arrival;
  start(ex, endpoint, std::move(jo), options.sampling, std::move(choices),
        [&so](SinkContext context) { return make_openai_sink(std::move(context), std::move(so)); });
}

void ApiService::completions(const std::shared_ptr<http::Exchange>& ex) {
  const std::string endpoint = "/v1/completions";
  const auto arrival = Clock::now();
  auto parsed = parse_completion_request(ex->request().body);
  if (auto* e = std::get_if<ApiError>(&parsed)) return answer(ex, endpoint, error_response(*e));
  CompletionRequest& r = std::get<CompletionRequest>(parsed);
  if (auto e = check_model(r.options.model)) return answer(ex, endpoint, error_response(*e));
  if (r.echo && r.options.sampling.logprobs()) {
    return answer(ex, endpoint, error_response(bad_request("'echo' together with 'logprobs' is not supported (prompt logprobs are not computed)", "echo")));
  }
  std::vector<ChoiceSpec> choices;
  std::vector<std::string> echo;
  for (const PromptInput& p : r.prompts) {
    ChoiceSpec spec;
    spec.sampling = r.options.sampling;
    std::string prompt_text;
    if (p.text) {
      auto ids = model_.tokenizer.encode(*p.text);
      if (!ids) return answer(ex, endpoint, error_response(bad_request("the prompt cannot be tokenized: " + ids.status().message(), "prompt")));
      spec.prompt.assign(ids->begin(), ids->end());
      prompt_text = *p.text;
    } else {
      spec.prompt = p.token_ids;
      if (auto e = check_token_ids(spec.prompt, "prompt")) return answer(ex, endpoint, error_response(*e));
      if (r.echo) {
        auto decoded = model_.tokenizer.decode(spec.prompt);
        if (decoded) prompt_text = *decoded;
      }
    }
    if (auto e = fit_context(spec.prompt.size(), r.options.max_tokens, spec.sampling)) return answer(ex, endpoint, error_response(*e));
    for (ChoiceSpec& c : n_choices(spec, r.options.n)) {
      choices.push_back(std::move(c));
      if (r.echo) echo.push_back(prompt_text);
    }
  }
  start_openai(ex, endpoint, ApiFlavor::kCompletion, r.options, arrival, std::move(choices), std::move(echo));
}

std::variant<std::string, ApiError> ApiService::render_chat(const ChatRequest& r) const {
  if (!model_.chat_template) return bad_request("this model has no chat template; use /v1/completions", "messages");
  chat_template::ChatRenderRequest render;
  for (const ChatMessage& m : r.messages) render.messages.push_back(nlohmann::ordered_json(m.raw));
  if (r.tools) render.tools = nlohmann::ordered_json(*r.tools);
  render.add_generation_prompt = r.add_generation_prompt;
  auto rendered = model_.chat_template->render(render);
  if (!rendered) return bad_request("the chat template failed on these messages: " + rendered.status().message(), "messages");
  return std::move(*rendered);
}

void ApiService::chat_completions(const std::shared_ptr<http::Exchange>& ex) {
  const std::string endpoint = "/v1/chat/completions";
  const auto arrival = Clock::now();
  auto parsed = parse_chat_request(ex->request().body);
  if (auto* e = std::get_if<ApiError>(&parsed)) return answer(ex, endpoint, error_response(*e));
  ChatRequest& r = std::get<ChatRequest>(parsed);
  if (auto e = check_model(r.options.model)) return answer(ex, endpoint, error_response(*e));
  auto rendered = render_chat(r);
  if (auto* e = std::get_if<ApiError>(&rendered)) return answer(ex, endpoint, error_response(*e));
  tokenizer::EncodeOptions eo;
  eo.add_special_tokens = tokenizer::SpecialTokens::kNone;  // the template wrote them
  auto ids = model_.tokenizer.encode(std::get<std::string>(rendered), eo);
  if (!ids) return answer(ex, endpoint, error_response(bad_request("the messages cannot be tokenized: " + ids.status().message(), "messages")));
  ChoiceSpec spec;
  spec.prompt.assign(ids->begin(), ids->end());
  spec.sampling = r.options.sampling;
  if (auto e = fit_context(spec.prompt.size(), r.options.max_tokens, spec.sampling)) return answer(ex, endpoint, error_response(*e));
  start_openai(ex, endpoint, ApiFlavor::kChat, r.options, arrival, n_choices(spec, r.options.n), {});
}

void ApiService::generate(const std::shared_ptr<http::Exchange>& ex, bool stream) {
  const std::string endpoint = stream ? "/generate_stream" : "/generate";
  const auto arrival = Clock::now();
  auto parsed = parse_generate_request(ex->request().body);
  if (auto* e = std::get_if<ApiError>(&parsed)) return answer(ex, endpoint, error_response(*e));
  GenerateApiRequest& r = std::get<GenerateApiRequest>(parsed);
  auto ids = model_.tokenizer.encode(r.inputs);
  if (!ids) return answer(ex, endpoint, error_response(bad_request("the inputs cannot be tokenized: " + ids.status().message(), "inputs")));
  ChoiceSpec spec;
  spec.prompt.assign(ids->begin(), ids->end());
  spec.sampling = r.options.sampling;
  if (auto e = fit_context(spec.prompt.size(), r.options.max_tokens, spec.sampling)) return answer(ex, endpoint, error_response(*e));
  JobOptions jo;
  jo.request_id = new_id("gen");
  jo.model = options_.served_name;
  jo.stop = r.options.stop;
  jo.skip_special_tokens = r.options.skip_special_tokens;
  jo.arrival = arrival;
  start(ex, endpoint, std::move(jo), r.options.sampling, n_choices(spec, 1),
        [stream](SinkContext context) { return make_generate_sink(std::move(context), stream); });
}

void ApiService::tokenize(const std::shared_ptr<http::Exchange>& ex) {
  const std::string endpoint = "/v1/tokenize";
  auto parsed = json_object(ex->request().body);
  if (auto* e = std::get_if<ApiError>(&parsed)) return answer(ex, endpoint, error_response(*e));
  const json& j = std::get<json>(parsed);
  if (j.contains("model") && !j["model"].is_null()) {
    if (!j["model"].is_string()) return answer(ex, endpoint, error_response(bad_request("'model' must be a string", "model")));
    if (auto e = check_model(j["model"].get<std::string>())) return answer(ex, endpoint, error_response(*e));
  }
  std::string text;
  bool add_special = true;
  if (j.contains("add_special_tokens")) {
    if (!j["add_special_tokens"].is_boolean()) return answer(ex, endpoint, error_response(bad_request("'add_special_tokens' must be a boolean", "add_special_tokens")));
    add_special = j["add_special_tokens"].get<bool>();
  }
  if (j.contains("messages")) {
    // Chat messages: rendered through the chat template, as /v1/chat/completions would.
    json body = j;
    body["model"] = options_.served_name;
    auto chat = parse_chat_request_json(body);
    if (auto* e = std::get_if<ApiError>(&chat)) return answer(ex, endpoint, error_response(*e));
    auto rendered = render_chat(std::get<ChatRequest>(chat));
    if (auto* e = std::get_if<ApiError>(&rendered)) return answer(ex, endpoint, error_response(*e));
    text = std::get<std::string>(rendered);
    if (!j.contains("add_special_tokens")) add_special = false;
  } else if (j.contains("prompt") && j["prompt"].is_string()) {
    text = j["prompt"].get<std::string>();
  } else {
    return answer(ex, endpoint, error_response(bad_request("give 'prompt' (a string) or 'messages'", "prompt")));
  }
  tokenizer::EncodeOptions eo;
  eo.add_special_tokens = add_special ? tokenizer::SpecialTokens::kAdd : tokenizer::SpecialTokens::kNone;
  const auto start = Clock::now();
  auto ids = model_.tokenizer.encode(text, eo);
  metrics_.observe_tokenize(std::chrono::duration<double>(Clock::now() - start).count());
  if (!ids) return answer(ex, endpoint, error_response(bad_request("cannot tokenize: " + ids.status().message(), "prompt")));
  json out = {{"tokens", *ids}, {"count", ids->size()}};
  if (auto context = context_length()) out["max_model_len"] = *context;
  answer(ex, endpoint, {200, "application/json", out.dump(), {}});
}

void ApiService::detokenize(const std::shared_ptr<http::Exchange>& ex) {
  const std::string endpoint = "/v1/detokenize";
  auto parsed = json_object(ex->request().body);
  if (auto* e = std::get_if<ApiError>(&parsed)) return answer(ex, endpoint, error_response(*e));
  const json& j = std::get<json>(parsed);
  if (j.contains("model") && j["model"].is_string()) {
    if (auto e = check_model(j["model"].get<std::string>())) return answer(ex, endpoint, error_response(*e));
  }
  if (!j.contains("tokens") || !j["tokens"].is_array()) {
    return answer(ex, endpoint, error_response(bad_request("'tokens' must be a list of token ids", "tokens")));
  }
  std::vector<int32_t> ids;
  for (const json& t : j["tokens"]) {
    if (!t.is_number_integer()) return answer(ex, endpoint, error_response(bad_request("'tokens' must be a list of token ids", "tokens")));
    const int64_t v = t.get<int64_t>();
    if (v < 0 || v > INT32_MAX) return answer(ex, endpoint, error_response(bad_request("token id " + std::to_string(v) + " is outside the vocabulary", "tokens")));
    ids.push_back(static_cast<int32_t>(v));
  }
  if (auto e = check_token_ids(ids, "tokens")) return answer(ex, endpoint, error_response(*e));
  auto text = model_.tokenizer.decode(ids);
  if (!text) return answer(ex, endpoint, error_response(bad_request(text.status().message(), "tokens")));
  answer(ex, endpoint, {200, "application/json", json{{"prompt", *text}}.dump(), {}});
}

void ApiService::models(const std::shared_ptr<http::Exchange>& ex) {
  const std::string endpoint = "/v1/models";
  json card = {{"id", options_.served_name}, {"object", "model"}, {"created", unix_seconds()}, {"owned_by", "tessera"}};
  if (auto context = context_length()) card["max_model_len"] = *context;
  const std::string& path = ex->request().path;
  if (path.size() > endpoint.size()) {
    const std::string id = path.substr(endpoint.size() + 1);
    if (auto e = check_model(id)) return answer(ex, endpoint, error_response(*e));
    return answer(ex, endpoint, {200, "application/json", card.dump(), {}});
  }
  answer(ex, endpoint, {200, "application/json", json{{"object", "list"}, {"data", json::array({card})}}.dump(), {}});
}

bool ApiService::wait_idle(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  return idle_.wait_for(lock, timeout, [&] { return num_live_ == 0; });
}

void ApiService::cancel_all() {
  std::vector<std::shared_ptr<GenerationJob>> live;
  {
    std::lock_guard lock(mutex_);
    for (auto& [key, weak] : jobs_) {
      if (auto j = weak.lock()) live.push_back(std::move(j));
    }
  }
  for (auto& j : live) {
    j->cancel({503, "service_unavailable", "the server shut down before the request finished; retry", "", "draining"});
  }
}

int64_t ApiService::num_in_flight() const {
  std::lock_guard lock(mutex_);
  return num_in_flight_;
}

}  // namespace tessera::gateway
