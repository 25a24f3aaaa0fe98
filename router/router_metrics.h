// The router's Prometheus metrics, named as operators chart them for vLLM (DESIGN.md,
// Metrics): request gauges, KV usage, token and preemption counters, prefix-cache
// queries/hits in tokens, and the latency histograms. The `group` label tells worker
// groups (data-parallel replicas) apart; `model` and `tier` come from the registry's
// constant labels. Updates are lock-free on the metrics themselves; each group's step
// loop calls update()/observe_step() for its own group only.
#pragma once

#include <map>
#include <mutex>
#include <string>
#include <string_view>

#include "router/scheduler.h"
#include "tessera/common/metrics.h"

namespace tessera::router {

// Times of one finished request, in seconds.
struct RequestTimes {
  double queue = 0;           // arrival → admitted (0: not measured)
  double first_token = 0;     // arrival → first token (0: none was produced)
  double e2e = 0;             // arrival → finish
  double inter_token = 0;     // mean gap between output tokens (0: fewer than 2)
};

class RouterMetrics {
 public:
  explicit RouterMetrics(metrics::Registry& registry);

  // Gauges from the group's scheduler, and counters advanced by what its cumulative
  // stats gained since the last call (a scheduler rebuilt from zero restarts the deltas).
  void update(const std::string& group, const SchedulerStats& stats);
  void observe_step(double seconds, int64_t batch_tokens);
  void observe_finished(FinishReason reason, const RequestTimes& times);

  // "stop", "length", "abort" or "error": vLLM's finished_reason values.
  static const char* finished_reason_label(FinishReason reason);

 private:
  struct Last {
    double prompt_tokens = 0, generation_tokens = 0, preemptions = 0, queries = 0, hits = 0;
  };
  metrics::Family<metrics::Gauge>& running_;
  metrics::Family<metrics::Gauge>& waiting_;
  metrics::Family<metrics::Gauge>& kv_usage_;
  metrics::Family<metrics::Counter>& prompt_tokens_;
  metrics::Family<metrics::Counter>& generation_tokens_;
  metrics::Family<metrics::Counter>& preemptions_;
  metrics::Family<metrics::Counter>& prefix_queries_;
  metrics::Family<metrics::Counter>& prefix_hits_;
  metrics::Family<metrics::Counter>& success_;
  metrics::Family<metrics::Histogram>& ttft_;
  metrics::Family<metrics::Histogram>& inter_token_;
  metrics::Family<metrics::Histogram>& e2e_;
  metrics::Family<metrics::Histogram>& queue_;
  metrics::Family<metrics::Histogram>& step_duration_;
  metrics::Family<metrics::Histogram>& step_tokens_;
  std::mutex last_mutex_;  // groups' loops update their own entry
  std::map<std::string, Last> last_;
};

}  // namespace tessera::router
