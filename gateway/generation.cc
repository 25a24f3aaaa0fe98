#include "gateway/generation.h"

#include <algorithm>

#include "gateway/gateway_metrics.h"

namespace tessera::gateway {

namespace {

using Clock = std::chrono::steady_clock;

int64_t unix_us(std::chrono::system_clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::microseconds>(t.time_since_epoch()).count();
}

// Code points in UTF-8 text: OpenAI's text offsets count characters, not bytes.
size_t num_characters(std::string_view text) {
  size_t n = 0;
  for (unsigned char c : text) n += (c & 0xC0) != 0x80;
  return n;
}

// One token's own text (special tokens spelled out), as logprobs show it.
std::string token_text(const tokenizer::Tokenizer& tokenizer, int32_t id) {
  const int32_t ids[] = {id};
  auto text = tokenizer.decode(ids);
  return text ? *text : std::string();
}

}  // namespace

ApiError api_error_from_grpc(const grpc::Status& status) {
  ApiError e;
  e.message = status.error_message().empty() ? "the router failed the request" : status.error_message();
  switch (status.error_code()) {
    case grpc::StatusCode::INVALID_ARGUMENT:
    case grpc::StatusCode::OUT_OF_RANGE:
    case grpc::StatusCode::FAILED_PRECONDITION:
      e.status = 400;
      break;
    case grpc::StatusCode::NOT_FOUND:
      e.status = 404;
      e.code = "model_not_found";
      break;
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      e.status = 429;
      e.type = "rate_limit_error";
      e.code = "overloaded";
      break;
    case grpc::StatusCode::UNAVAILABLE:
      e.status = 503;
      e.type = "service_unavailable";
      e.code = "unavailable";
      break;
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      e.status = 504;
      e.type = "timeout";
      e.message = "the request ran past its deadline: " + e.message;
      break;
    default:
      e.status = 500;
      e.type = "internal_error";
      break;
  }
  return e;
}

struct GenerationJob::Call : grpc::ClientReadReactor<v1::GenerateResponse> {
  GenerationJob* job = nullptr;
  size_t choice = 0;
  RouterPool::Replica* replica = nullptr;
  grpc::ClientContext context;
  v1::GenerateRequest request;
  v1::GenerateResponse response;
  bool done = false;

  void OnReadDone(bool ok) override {
    if (ok) job->on_response(this, response);
  }
  void OnDone(const grpc::Status& status) override { job->on_call_done(this, status); }
};

struct GenerationJob::Choice {
  Choice(uint32_t i, ChoiceSpec s, const tokenizer::Tokenizer& tok, bool skip_special, std::vector<std::string> stops)
      : spec(std::move(s)),
        decoder(tok, {skip_special ? tokenizer::SpecialTokenOutput::kSkip : tokenizer::SpecialTokenOutput::kKeep}),
        matcher(std::move(stops)) {
    result.index = i;
    result.usage.prompt_tokens = static_cast<uint32_t>(spec.prompt.size());
  }
  ChoiceSpec spec;
  tokenizer::IncrementalDecoder decoder;
  StopStringMatcher matcher;
  ChoiceResult result;
  std::vector<RouterPool::Replica*> tried;
  Call* call = nullptr;   // the live attempt
  bool received = false;  // a response arrived: no placing it again after that
  bool finished = false;  // the output is complete
  bool ended = false;     // the last attempt's call is done
  size_t num_chars = 0;   // characters (code points) in result.text
  std::optional<grpc::Status> last_status;
};

std::shared_ptr<GenerationJob> GenerationJob::start(RouterPool& pool, const tokenizer::Tokenizer& tokenizer,
                                                    GatewayMetrics* metrics, JobOptions options,
                                                    std::vector<ChoiceSpec> choices, std::shared_ptr<GenerationSink> sink) {
  std::shared_ptr<GenerationJob> job(new GenerationJob(pool, tokenizer, metrics, std::move(options), std::move(sink)));
  job->self_ = job;
  std::vector<Call*> launch;
  {
    std::lock_guard lock(job->mutex_);
    for (size_t i = 0; i < choices.size(); ++i) {
      job->choices_.push_back(std::make_unique<Choice>(static_cast<uint32_t>(i), std::move(choices[i]), tokenizer,
                                                       job->options_.skip_special_tokens, job->options_.stop));
    }
    for (size_t i = 0; i < job->choices_.size() && !job->error_; ++i) {
      if (Call* c = job->prepare_call(i)) launch.push_back(c);
    }
    if (job->error_) {
      for (Call* c : launch) job->unprepare(c);
      launch.clear();
      for (auto& c : job->choices_) c->ended = true;
      job->maybe_done();
      job->self_.reset();
    }
  }
  for (Call* c : launch) launch_call(c);
  return job;
}

GenerationJob::GenerationJob(RouterPool& pool, const tokenizer::Tokenizer& tokenizer, GatewayMetrics* metrics,
                             JobOptions options, std::shared_ptr<GenerationSink> sink)
    : pool_(pool), tokenizer_(tokenizer), metrics_(metrics), options_(std::move(options)), sink_(std::move(sink)) {}

GenerationJob::~GenerationJob() = default;

GenerationJob::Call* GenerationJob::prepare_call(size_t index) {
  Choice& c = *choices_[index];
  RouterPool::Replica* replica = pool_.choose(c.spec.prompt, c.tried);
  if (replica == nullptr) {
    if (c.last_status) {
      error_ = api_error_from_grpc(*c.last_status);
    } else {
      error_ = ApiError{503, "service_unavailable", "no router is ready to serve this model; retry later", "", "unavailable"};
    }
    c.ended = true;
    return nullptr;
  }
  c.tried.push_back(replica);
  auto call = std::make_unique<Call>();
  call->job = this;
  call->choice = index;
  call->replica = replica;
  call->request.set_request_id(options_.request_id + "-" + std::to_string(index));
  call->request.set_model(options_.model);
  call->request.mutable_prompt_token_ids()->Assign(c.spec.prompt.begin(), c.spec.prompt.end());
  *call->request.mutable_sampling() = c.spec.sampling;
  const auto now_sys = std::chrono::system_clock::now();
  const auto deadline = now_sys + (options_.arrival + options_.timeout - Clock::now());
  call->request.set_arrival_unix_us(unix_us(now_sys - (Clock::now() - options_.arrival)));
  call->request.set_deadline_unix_us(unix_us(deadline));
  call->context.set_deadline(deadline + std::chrono::seconds(1));  // the router ends it first, with a reason
  c.call = call.get();
  replica->num_in_flight.fetch_add(1);
  calls_.push_back(std::move(call));
  return c.call;
}

void GenerationJob::unprepare(Call* call) {
  call->replica->num_in_flight.fetch_sub(1);
  call->done = true;
}

void GenerationJob::launch_call(Call* call) {
  call->replica->stub->async()->Generate(&call->context, &call->request, call);
  call->StartRead(&call->response);
  call->StartCall();
}

void GenerationJob::cancel(ApiError why) {
  std::lock_guard lock(mutex_);
  if (!cancelled_) cancelled_ = std::move(why);
  for (auto& call : calls_) {
    if (!call->done) call->context.TryCancel();
  }
}

void GenerationJob::on_response(Call* call, const v1::GenerateResponse& response) {
  std::lock_guard lock(mutex_);
  Choice& c = *choices_[call->choice];
  // Keep the call from completing while the sink holds a delta: `resume` reads on and
  // releases the hold; a sink that drops it without calling releases it too.
  call->AddHold();
  struct Resume {
    Call* call = nullptr;
    bool resumed = false;
    ~Resume() {
      if (!resumed) call->RemoveHold();
    }
  };
  auto token = std::make_shared<Resume>();
  token->call = call;
  auto resume = [token] {
    if (token->resumed) return;
    token->resumed = true;
    token->call->StartRead(&token->call->response);
    token->call->RemoveHold();
  };
  if (c.finished || cancelled_ || error_) return resume();  // drain the stream to its end
  c.received = true;
  ChoiceDelta delta;
  delta.index = c.result.index;
  absorb(c, response, delta);
  if (response.has_finished() && !c.finished) {
    const v1::FinishInfo& f = response.finished();
    if (response.has_usage()) c.result.usage.cached_prompt_tokens = response.usage().cached_prompt_tokens();
    if (f.reason() == v1::FINISH_REASON_ERROR) {
      error_ = ApiError{500, "internal_error", f.error_message().empty() ? "the request failed in the router" : f.error_message(), "", ""};
      c.finished = true;
    } else {
      finish_choice(c, f.reason(), delta);
    }
  }
  // Nothing more is wanted from this call: a stop string matched, or the choice failed.
  if (error_ || (c.finished && c.result.reason == v1::FINISH_REASON_STOP_STRING)) call->context.TryCancel();
  c.result.text += delta.text;
  c.num_chars += num_characters(delta.text);
  c.result.token_ids.insert(c.result.token_ids.end(), delta.token_ids.begin(), delta.token_ids.end());
  c.result.logprobs.insert(c.result.logprobs.end(), delta.logprobs.begin(), delta.logprobs.end());
  if (!delta.token_ids.empty() && !first_token_) {
    first_token_ = Clock::now();
    if (metrics_) metrics_->observe_ttft(std::chrono::duration<double>(*first_token_ - options_.arrival).count());
  }
  if (error_ || (delta.text.empty() && delta.token_ids.empty() && !delta.finish_reason)) return resume();
  sink_->on_delta(delta, std::move(resume));
}

void GenerationJob::absorb(Choice& c, const v1::GenerateResponse& response, ChoiceDelta& delta) {
  for (int i = 0; i < response.token_ids_size() && !c.finished; ++i) {
    const int32_t id = response.token_ids(i);
    delta.token_ids.push_back(id);
    ++c.result.usage.completion_tokens;
    auto piece = c.decoder.push(id);
    if (!piece) {
      error_ = ApiError{500, "internal_error", "the router sent a token the tokenizer cannot decode: " + piece.status().message(), "", ""};
      c.finished = true;
      return;
    }
    if (options_.logprobs && i < response.logprobs_size()) {
      const v1::PositionLogprobs& lp = response.logprobs(i);
      TokenLogprobText t;
      t.token = token_text(tokenizer_, id);
      t.bytes = tokenizer_.token_bytes(id);
      t.logprob = lp.chosen().logprob();
      t.text_offset = c.num_chars + num_characters(delta.text);
      for (const v1::TokenLogprob& alt : lp.top()) {
        t.top.push_back({token_text(tokenizer_, alt.token_id()), alt.logprob(), tokenizer_.token_bytes(alt.token_id())});
      }
      delta.logprobs.push_back(std::move(t));
    }
    StopStringMatcher::Output out = c.matcher.push(*piece);
    delta.text += out.text;
    if (out.stopped_by) finish_choice(c, v1::FINISH_REASON_STOP_STRING, delta);
  }
}

void GenerationJob::finish_choice(Choice& c, v1::FinishReason reason, ChoiceDelta& delta) {
  if (reason != v1::FINISH_REASON_STOP_STRING) {
    // What the decoder and the matcher still hold; a stop string may yet complete in it.
    StopStringMatcher::Output out = c.matcher.push(c.decoder.finish());
    delta.text += out.text;
    if (out.stopped_by) {
      reason = v1::FINISH_REASON_STOP_STRING;
    } else {
      delta.text += c.matcher.finish();
    }
  }
  c.finished = true;
  c.result.reason = reason;
  c.result.finish_reason = finish_reason_text(reason);
  delta.finish_reason = c.result.finish_reason;
}

void GenerationJob::on_call_done(Call* call, const grpc::Status& status) {
  std::shared_ptr<GenerationJob> keep;  // released after the lock: the job may end here
  Call* relaunch = nullptr;
  {
    std::lock_guard lock(mutex_);
    call->done = true;
    call->replica->num_in_flight.fetch_sub(1);
    Choice& c = *choices_[call->choice];
    c.last_status = status;
    if (!c.finished && !cancelled_ && !error_) {
      if (!c.received && status.error_code() == grpc::StatusCode::UNAVAILABLE) {
        // Refused before any token (router draining, no group serving, unreachable): try
        // another replica; the pool skips this one until a poll finds it ready.
        pool_.mark_down(call->replica);
        relaunch = prepare_call(call->choice);
      } else if (status.ok()) {
        error_ = ApiError{502, "internal_error", "the router ended the stream without finishing the request", "", ""};
      } else {
        error_ = api_error_from_grpc(status);
      }
    }
    if (!relaunch) c.ended = true;
    if (error_) {
      for (auto& other : calls_) {
        if (!other->done) other->context.TryCancel();
      }
    }
    if (!relaunch) maybe_done();
    if (done_) keep = std::move(self_);
  }
  if (relaunch) launch_call(relaunch);
}

void GenerationJob::maybe_done() {
  if (done_) return;
  for (const auto& c : choices_) {
    if (!c->ended) return;
  }
  done_ = true;
  std::vector<ChoiceResult> results;
  for (const auto& c : choices_) results.push_back(c->result);
  if (metrics_ && !error_ && !cancelled_) {
    const auto now = Clock::now();
    metrics_->observe_e2e(std::chrono::duration<double>(now - options_.arrival).count());
    uint64_t num_tokens = 0;
    for (const auto& r : results) num_tokens += r.usage.completion_tokens;
    if (first_token_ && num_tokens > results.size()) {
      metrics_->observe_inter_token(std::chrono::duration<double>(now - *first_token_).count() /
                                    static_cast<double>(num_tokens - results.size()));
    }
  }
  sink_->on_done(results, error_ ? error_ : cancelled_);
}

}  // namespace tessera::gateway
