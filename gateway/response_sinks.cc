#include "gateway/response_sinks.h"

#include "gateway/gateway_metrics.h"

namespace tessera::gateway {

namespace {

using json = nlohmann::json;

constexpr const char* kEventStream = "text/event-stream";

// What every sink does at the end: metrics, the in-flight slot, and the answer for an
// error that came before anything was sent.
class SinkBase : public GenerationSink {
 public:
  // `done_marker`: the stream ends with `data: [DONE]` (OpenAI), or just ends (LightLLM).
  SinkBase(SinkContext context, bool done_marker) : ctx_(std::move(context)), done_marker_(done_marker) {}

 protected:
  void start_stream_once() {
    if (started_) return;
    started_ = true;
    ctx_.exchange->start_stream(200, kEventStream);
  }
  void write_event(const std::string& json_text, std::function<void()> resume) {
    ctx_.exchange->write(sse_event(json_text), [resume = std::move(resume)](bool) { resume(); });
  }
  // Ends the exchange for an error; true when it did (the caller has nothing more to send).
  bool finish_error(const std::optional<ApiError>& error) {
    if (!error) return false;
    if (error->status != 499) {  // 499: the client is gone, nobody to tell
      if (started_) {
        ctx_.exchange->write(sse_event(error->to_json()));
        if (done_marker_) ctx_.exchange->write(std::string(kSseDone));
        ctx_.exchange->end_stream();
      } else {
        ctx_.exchange->respond(error_response(*error));
      }
    }
    end(error->status);
    return true;
  }
  void end(int status) {
    if (ctx_.metrics) ctx_.metrics->count_request(ctx_.endpoint, status);
    if (ctx_.release) ctx_.release();
  }

  SinkContext ctx_;
  const bool done_marker_;
  bool started_ = false;
};

class OpenAiSink final : public SinkBase {
 public:
  OpenAiSink(SinkContext context, OpenAiSinkOptions options)
      : SinkBase(std::move(context), /*done_marker=*/true), o_(std::move(options)) {}

  void on_delta(const ChoiceDelta& d, std::function<void()> resume) override {
    if (!o_.stream) return resume();
    start_stream_once();
    Choice c;
    c.index = d.index;
    c.text = d.text;
    c.finish_reason = d.finish_reason;
    const bool chat = o_.flavor == ApiFlavor::kChat;
    if (d.index < o_.echo_prefix.size()) {  // completions echo: the prompt leads the choice's first chunk
      if (d.index >= echoed_.size()) echoed_.resize(d.index + 1, false);
      if (!echoed_[d.index]) c.text = o_.echo_prefix[d.index] + c.text;
      echoed_[d.index] = true;
    }
    if (o_.logprobs && !d.logprobs.empty()) {
      c.logprobs = chat ? chat_logprobs_json(d.logprobs) : completion_logprobs_json(d.logprobs);
    }
    if (chat) {
      if (d.index >= role_sent_.size()) role_sent_.resize(d.index + 1, false);
      const bool first = !role_sent_[d.index];
      role_sent_[d.index] = true;
      write_event(chat_chunk(o_.head, c, first), std::move(resume));
    } else {
      write_event(completion_chunk(o_.head, c), std::move(resume));
    }
  }

  void on_done(const std::vector<ChoiceResult>& results, const std::optional<ApiError>& error) override {
    if (finish_error(error)) return;
    UsageCounts usage;
    for (const ChoiceResult& r : results) {
      if (r.index % o_.n == 0) {
        usage.prompt_tokens += r.usage.prompt_tokens;
        usage.cached_prompt_tokens += r.usage.cached_prompt_tokens;
      }
      usage.completion_tokens += r.usage.completion_tokens;
    }
    const bool chat = o_.flavor == ApiFlavor::kChat;
    if (o_.stream) {
      start_stream_once();  // every choice may have finished without a delta
      if (o_.include_usage) ctx_.exchange->write(sse_event(usage_chunk(o_.head, chat, usage)));
      ctx_.exchange->write(std::string(kSseDone));
      ctx_.exchange->end_stream();
    } else {
      std::vector<Choice> choices;
      for (const ChoiceResult& r : results) {
        Choice c;
        c.index = r.index;
        c.text = r.index < o_.echo_prefix.size() ? o_.echo_prefix[r.index] + r.text : r.text;
        c.finish_reason = r.finish_reason;
        if (o_.logprobs) c.logprobs = chat ? chat_logprobs_json(r.logprobs) : completion_logprobs_json(r.logprobs);
        choices.push_back(std::move(c));
      }
      ctx_.exchange->respond({200, "application/json",
                              chat ? chat_body(o_.head, choices, usage) : completion_body(o_.head, choices, usage), {}});
    }
    end(200);
  }

 private:
  OpenAiSinkOptions o_;
  std::vector<bool> role_sent_;
  std::vector<bool> echoed_;
};

// LightLLM: {"generated_text": [text], "count_output_tokens", "finish_reason", "prompt_tokens"}
// and, streamed, one event per delta: {"token": {...}, "generated_text", "finished",
// "finish_reason", "details"}.
class GenerateSink final : public SinkBase {
 public:
  GenerateSink(SinkContext context, bool stream) : SinkBase(std::move(context), /*done_marker=*/false), stream_(stream) {}

  void on_delta(const ChoiceDelta& d, std::function<void()> resume) override {
    count_ += d.token_ids.size();
    text_ += d.text;
    if (!stream_) return resume();
    start_stream_once();
    json token = {{"id", d.token_ids.empty() ? json(nullptr) : json(d.token_ids.back())},
                  {"text", d.text},
                  {"logprob", d.logprobs.empty() ? json(nullptr) : json(d.logprobs.back().logprob)},
                  {"special", false},
                  {"count_output_tokens", count_}};
    json event = {{"token", token},
                  {"generated_text", d.finish_reason ? json(text_) : json(nullptr)},
                  {"finished", d.finish_reason.has_value()},
                  {"finish_reason", d.finish_reason ? json(*d.finish_reason) : json(nullptr)},
                  {"details", nullptr}};
    write_event(event.dump(), std::move(resume));
  }

  void on_done(const std::vector<ChoiceResult>& results, const std::optional<ApiError>& error) override {
    if (finish_error(error)) return;
    const ChoiceResult& r = results.front();
    if (stream_) {
      start_stream_once();
      ctx_.exchange->end_stream();
    } else {
      json body = {{"generated_text", json::array({r.text})},
                   {"count_output_tokens", r.usage.completion_tokens},
                   {"finish_reason", r.finish_reason ? json(*r.finish_reason) : json(nullptr)},
                   {"prompt_tokens", r.usage.prompt_tokens}};
      ctx_.exchange->respond({200, "application/json", body.dump(), {}});
    }
    end(200);
  }

 private:
  const bool stream_;
  std::string text_;
  size_t count_ = 0;
};

}  // namespace

http::Response error_response(const ApiError& error) {
  http::Response r{error.status, "application/json", error.to_json(), {}};
  if (error.status == 429 || error.status == 503) r.headers.emplace_back("Retry-After", "1");
  return r;
}

std::shared_ptr<GenerationSink> make_openai_sink(SinkContext context, OpenAiSinkOptions options) {
  return std::make_shared<OpenAiSink>(std::move(context), std::move(options));
}

std::shared_ptr<GenerationSink> make_generate_sink(SinkContext context, bool stream) {
  return std::make_shared<GenerateSink>(std::move(context), stream);
}

}  // namespace tessera::gateway
