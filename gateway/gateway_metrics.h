// The gateway's Prometheus metrics (DESIGN.md "Metrics"; the registry carries tier=gateway):
// requests by endpoint and HTTP status, requests in flight, time to first token, time per
// output token and end-to-end latency as the client sees them, tokenize time, and whether
// each router replica answers ready. Every method is thread-safe.
#pragma once

#include <string>
#include <string_view>

#include "tessera/common/metrics.h"

namespace tessera::gateway {

class GatewayMetrics {
 public:
  explicit GatewayMetrics(metrics::Registry& registry);

  void count_request(std::string_view endpoint, int status);
  void observe_ttft(double seconds);
  void observe_inter_token(double seconds);
  void observe_e2e(double seconds);
  void observe_tokenize(double seconds);
  void set_router_ready(const std::string& address, bool ready);
  metrics::Gauge& in_flight() { return in_flight_; }

 private:
  metrics::Family<metrics::Counter>& requests_;
  metrics::Gauge& in_flight_;
  metrics::Histogram& ttft_;
  metrics::Histogram& inter_token_;
  metrics::Histogram& e2e_;
  metrics::Histogram& tokenize_;
  metrics::Family<metrics::Gauge>& router_ready_;
};

}  // namespace tessera::gateway
