// One HTTP request's generation: its choices (OpenAI `n`, or the prompts of a batch), each
// one Router.Generate call on a replica the pool chose, turned from token ids back into
// text as they arrive: incremental detokenization (never half a UTF-8 character), stop
// strings (matched across tokens, never emitted, the call cancelled at the match), logprob
// texts. A call that a replica refuses as unavailable before any token is placed again on
// another replica. The endpoint's Sink sees every delta and, once, the end.
//
// Threads: gRPC's callback threads drive the calls; a job's state is under its mutex, and
// the sink is called with it held, so a sink sees one event at a time, in order per choice.
// A sink paces a choice by calling the `resume` it is handed (for a stream: once the delta
// reached the client's socket); the choice reads nothing more from its router until then.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "gateway/openai/request.h"
#include "gateway/openai/response.h"
#include "gateway/openai/stop_strings.h"
#include "gateway/router_pool.h"
#include "gateway/tokenizer/tokenizer.h"

namespace tessera::gateway {

class GatewayMetrics;

// What grew in one choice since its last delta.
struct ChoiceDelta {
  uint32_t index = 0;
  std::string text;                        // safe to send (stop strings already applied)
  std::vector<int32_t> token_ids;          // the tokens this delta covers
  std::vector<TokenLogprobText> logprobs;  // one per token, when requested
  std::optional<std::string> finish_reason;  // set on the choice's last delta
};

// A choice when it ended.
struct ChoiceResult {
  uint32_t index = 0;
  std::string text;
  std::vector<int32_t> token_ids;
  std::vector<TokenLogprobText> logprobs;
  std::optional<std::string> finish_reason;
  v1::FinishReason reason = v1::FINISH_REASON_UNSPECIFIED;
  UsageCounts usage;
};

class GenerationSink {
 public:
  virtual ~GenerationSink() = default;
  // New output of one choice. Call `resume` when ready for more of it (at once, or later).
  virtual void on_delta(const ChoiceDelta& delta, std::function<void()> resume) = 0;
  // Once, after every choice ended: `error` when the request failed (any delta may or may
  // not have gone out before), else the results in choice order.
  virtual void on_done(const std::vector<ChoiceResult>& results, const std::optional<ApiError>& error) = 0;
};

struct ChoiceSpec {
  std::vector<int32_t> prompt;
  v1::SamplingParams sampling;
};

struct JobOptions {
  std::string request_id;  // choice i runs as "<request_id>-<i>" in the router
  std::string model;
  std::vector<std::string> stop;  // stop strings
  bool skip_special_tokens = true;
  bool logprobs = false;  // logprob texts for the sampled tokens (and top alternatives)
  std::chrono::steady_clock::time_point arrival;
  std::chrono::milliseconds timeout{600000};  // deadline of the whole request
  // Held by the job and released as the last of it: after its sink, its router calls and
  // whatever they hold are destroyed. Whoever tears down what a job uses (the HTTP server,
  // the router pool) waits for it (ApiService::wait_idle).
  std::shared_ptr<void> lease;
};

class GenerationJob : public std::enable_shared_from_this<GenerationJob> {
 public:
  // Starts every choice. The job keeps itself alive until on_done has run.
  static std::shared_ptr<GenerationJob> start(RouterPool& pool, const tokenizer::Tokenizer& tokenizer,
                                              GatewayMetrics* metrics, JobOptions options,
                                              std::vector<ChoiceSpec> choices, std::shared_ptr<GenerationSink> sink);
  ~GenerationJob();
  // Every call is cancelled (the router aborts within a step); the sink still gets on_done,
  // with `why` as the error: 499 when the client went away (nothing is sent), 503 when the
  // server stops (the client is told).
  void cancel(ApiError why);

  struct Call;  // one attempt of one choice (a gRPC reactor)

 private:
  struct Choice;
  GenerationJob(RouterPool& pool, const tokenizer::Tokenizer& tokenizer, GatewayMetrics* metrics, JobOptions options,
                std::shared_ptr<GenerationSink> sink);
  // A call for the choice on a replica the pool picks (nullptr and error_ set when none is
  // ready); launched after the mutex is released. Mutex held.
  Call* prepare_call(size_t choice);
  void unprepare(Call* call);
  static void launch_call(Call* call);
  void on_response(Call* call, const v1::GenerateResponse& response);
  void on_call_done(Call* call, const grpc::Status& status);
  // Turns new token ids (and their logprobs) into the choice's next delta; mutex held.
  void absorb(Choice& c, const v1::GenerateResponse& response, ChoiceDelta& delta);
  void finish_choice(Choice& c, v1::FinishReason reason, ChoiceDelta& delta);
  void maybe_done();  // mutex held

  RouterPool& pool_;
  const tokenizer::Tokenizer& tokenizer_;
  GatewayMetrics* metrics_;
  const JobOptions options_;  // before every member that owns something: its lease goes last
  std::shared_ptr<GenerationSink> sink_;
  std::mutex mutex_;
  std::vector<std::unique_ptr<Choice>> choices_;
  std::vector<std::unique_ptr<Call>> calls_;  // every attempt, until the job ends
  std::optional<ApiError> error_;
  std::optional<ApiError> cancelled_;  // why the job was cancelled
  bool done_ = false;
  std::optional<std::chrono::steady_clock::time_point> first_token_;
  std::shared_ptr<GenerationJob> self_;  // kept until on_done
};

// A gRPC status from a router as the client's error (status code, OpenAI type, message).
ApiError api_error_from_grpc(const grpc::Status& status);

}  // namespace tessera::gateway
