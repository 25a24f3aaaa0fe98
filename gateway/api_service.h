// Every HTTP endpoint of the gateway: the OpenAI API (completions, chat completions, models,
// tokenize, detokenize), LightLLM's /generate and /generate_stream, and /health, /ready,
// /metrics (never behind the API key). A generation request is checked (parameters, model,
// context length), rendered and tokenized here, and handed to a GenerationJob whose sink
// answers the client; a client that hangs up cancels its job.
//
// Admission: at most max_concurrent_requests generations at once (more: 429 with
// Retry-After); while draining, none (503 with Retry-After, and /ready says 503).
// Thread-safe: handle() runs on the connections' strands.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "gateway/chat_template/chat_template.h"
#include "gateway/gateway_metrics.h"
#include "gateway/generation.h"
#include "gateway/http/http_server.h"
#include "gateway/response_sinks.h"
#include "gateway/router_pool.h"
#include "gateway/tokenizer/tokenizer.h"
#include "tessera/common/metrics.h"

namespace tessera::gateway {

struct ApiOptions {
  std::vector<std::string> api_keys;  // empty: no authentication
  uint32_t max_concurrent_requests = 1024;
  std::chrono::seconds request_timeout{600};
  std::string served_name;            // the OpenAI model name
  uint32_t max_model_len_tokens = 0;  // cap on prompt + output; 0: the model's context
};

// The text side of the model, loaded by the gateway from the model files.
struct ModelText {
  tokenizer::Tokenizer tokenizer;
  std::optional<chat_template::ChatTemplate> chat_template;
};

class ApiService {
 public:
  ApiService(ApiOptions options, ModelText model, RouterPool& pool, metrics::Registry& registry);

  void handle(const std::shared_ptr<http::Exchange>& exchange);

  // Draining: new generations get 503, /ready turns 503; running ones go on.
  void stop_admitting() { admitting_ = false; }
  bool admitting() const { return admitting_; }
  // True once no generation is in flight and every object of the finished ones (job, sink,
  // router calls, the HTTP exchange they hold) is gone, before the timeout. After it the
  // service, the router pool and the HTTP server may be torn down: no gRPC or HTTP thread
  // still holds anything of a request.
  bool wait_idle(std::chrono::milliseconds timeout);
  // Cancels every generation in flight; each client gets a 503 (or, mid-stream, an error
  // event and the end of the stream).
  void cancel_all();
  int64_t num_in_flight() const;

 private:
  struct Admission;  // an in-flight slot, held by the request's job until it is destroyed
  void completions(const std::shared_ptr<http::Exchange>& ex);
  void chat_completions(const std::shared_ptr<http::Exchange>& ex);
  void generate(const std::shared_ptr<http::Exchange>& ex, bool stream);
  void tokenize(const std::shared_ptr<http::Exchange>& ex);
  void detokenize(const std::shared_ptr<http::Exchange>& ex);
  void models(const std::shared_ptr<http::Exchange>& ex);
  http::Response metrics_response();

  // The prompt text of a chat request (its messages and tools through the chat template).
  std::variant<std::string, ApiError> render_chat(const ChatRequest& request) const;
  // The context window, or 503 while no router has described the model yet.
  std::optional<uint32_t> context_length() const;
  // Checks the prompt against the context and fills max_tokens; an error names the numbers.
  std::optional<ApiError> fit_context(size_t num_prompt_tokens, std::optional<uint32_t> max_tokens,
                                      v1::SamplingParams& sampling) const;
  std::optional<ApiError> check_model(const std::string& model) const;
  std::optional<ApiError> check_token_ids(const std::vector<int32_t>& ids, const char* param) const;
  // Takes an in-flight slot, or says why not (429 at the cap, 503 while draining).
  std::variant<std::shared_ptr<Admission>, ApiError> admit();
  using SinkFactory = std::function<std::shared_ptr<GenerationSink>(SinkContext)>;
  // Checks the token ids the sampling parameters name, takes an in-flight slot and starts
  // the job with the sink make_sink builds (the exchange's disconnect cancels it); answers
  // the error instead when there is one.
  void start(const std::shared_ptr<http::Exchange>& ex, const std::string& endpoint, JobOptions options,
             const v1::SamplingParams& sampling, std::vector<ChoiceSpec> choices, const SinkFactory& make_sink);
  // start() with the OpenAI sink of the flavor.
  void start_openai(const std::shared_ptr<http::Exchange>& ex, const std::string& endpoint, ApiFlavor flavor,
                    const GenerationOptions& options, std::chrono::steady_clock::time_point arrival,
                    std::vector<ChoiceSpec> choices, std::vector<std::string> echo);
  void answer(const std::shared_ptr<http::Exchange>& ex, const std::string& endpoint, http::Response response);
  std::string new_id(const char* prefix);

  const ApiOptions options_;
  const ModelText model_;
  RouterPool& pool_;
  metrics::Registry& registry_;
  GatewayMetrics metrics_;
  std::atomic<bool> admitting_{true};
  std::atomic<uint64_t> next_id_{1};
  const uint64_t id_salt_;
  mutable std::mutex mutex_;
  std::condition_variable idle_;  // notified each time num_live_ falls
  std::map<uint64_t, std::weak_ptr<GenerationJob>> jobs_;
  int64_t num_in_flight_ = 0;  // admitted and not yet released: the concurrency cap
  int64_t num_live_ = 0;       // admitted and not yet destroyed: what wait_idle waits for
};

}  // namespace tessera::gateway
