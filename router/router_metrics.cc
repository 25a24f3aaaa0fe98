#include "router/router_metrics.h"

namespace tessera::router {

namespace {

// Latency buckets from 1 ms to ~65 s, doubling: TTFT and e2e of chat requests span that.
std::vector<double> latency_buckets() { return metrics::exponential_buckets(0.001, 2.0, 17); }

}  // namespace

RouterMetrics::RouterMetrics(metrics::Registry& r)
    : running_(r.gauge("tessera_num_requests_running", "Requests running on a worker group.", {"group"})),
      waiting_(r.gauge("tessera_num_requests_waiting", "Requests waiting for admission.", {"group"})),
      kv_usage_(r.gauge("tessera_kv_cache_usage_ratio", "Share of KV pages in use (prefix cache included).",
                        {"group"})),
      prompt_tokens_(r.counter("tessera_prompt_tokens_total", "Prompt tokens admitted.", {"group"})),
      generation_tokens_(r.counter("tessera_generation_tokens_total", "Tokens generated.", {"group"})),
      preemptions_(r.counter("tessera_num_preemptions_total", "Sequences preempted (to be recomputed).", {"group"})),
      prefix_queries_(r.counter("tessera_prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache.",
                                {"group"})),
      prefix_hits_(r.counter("tessera_prefix_cache_hits_total", "Prompt tokens found in the prefix cache.", {"group"})),
      success_(r.counter("tessera_request_success_total", "Finished requests by reason.", {"finished_reason"})),
      ttft_(r.histogram("tessera_time_to_first_token_seconds", "Arrival to first token.", latency_buckets())),
      inter_token_(r.histogram("tessera_inter_token_latency_seconds", "Mean gap between a request's tokens.",
                               metrics::exponential_buckets(0.0005, 2.0, 14))),
      e2e_(r.histogram("tessera_e2e_request_latency_seconds", "Arrival to finish.", latency_buckets())),
      queue_(r.histogram("tessera_request_queue_time_seconds", "Arrival to admission.", latency_buckets())),
      step_duration_(r.histogram("tessera_step_duration_seconds", "One step of a worker group.",
                                 metrics::exponential_buckets(0.0005, 2.0, 14))),
      step_tokens_(r.histogram("tessera_step_batch_tokens", "Tokens computed in one step.",
                               metrics::exponential_buckets(1, 2.0, 14))) {}

const char* RouterMetrics::finished_reason_label(FinishReason reason) {
  switch (reason) {
    case FinishReason::kEos:
    case FinishReason::kStopToken: return "stop";
    case FinishReason::kLength:
    case FinishReason::kContextLength: return "length";
    case FinishReason::kAborted: return "abort";
    case FinishReason::kNone:
    case FinishReason::kError: break;
  }
  return "error";
}

void RouterMetrics::update(const std::string& group, const SchedulerStats& s) {
  running_.with({group}).set(s.num_running);
  waiting_.with({group}).set(s.num_waiting);
  kv_usage_.with({group}).set(s.kv_usage());
  std::lock_guard lock(last_mutex_);
  Last& last = last_[group];
  prompt_tokens_.with({group}).advance_to(static_cast<double>(s.num_prompt_tokens), last.prompt_tokens);
  generation_tokens_.with({group}).advance_to(static_cast<double>(s.num_generation_tokens), last.generation_tokens);
  preemptions_.with({group}).advance_to(static_cast<double>(s.num_preemptions), last.preemptions);
  prefix_queries_.with({group}).advance_to(static_cast<double>(s.prefix_cache.num_query_tokens), last.queries);
  prefix_hits_.with({group}).advance_to(static_cast<double>(s.prefix_cache.num_hit_tokens), last.hits);
}

void RouterMetrics::observe_step(double seconds, int64_t batch_tokens) {
  step_duration_.get().observe(seconds);
  step_tokens_.get().observe(static_cast<double>(batch_tokens));
}

void RouterMetrics::observe_finished(FinishReason reason, const RequestTimes& t) {
  success_.with({finished_reason_label(reason)}).inc();
  if (t.queue > 0) queue_.get().observe(t.queue);
  e2e_.get().observe(t.e2e);
  if (t.first_token > 0) ttft_.get().observe(t.first_token);
  if (t.inter_token > 0) inter_token_.get().observe(t.inter_token);
}

}  // namespace tessera::router
