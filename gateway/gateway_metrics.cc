#include "gateway/gateway_metrics.h"

namespace tessera::gateway {

namespace {

// 1 ms to ~65 s, doubling, as the router's latency histograms (dashboards overlay them).
std::vector<double> latency_buckets() { return metrics::exponential_buckets(0.001, 2.0, 17); }

}  // namespace

GatewayMetrics::GatewayMetrics(metrics::Registry& r)
    : requests_(r.counter("tessera_gateway_requests_total", "HTTP requests answered, by endpoint and status.",
                          {"endpoint", "status"})),
      in_flight_(r.gauge("tessera_gateway_requests_in_flight", "Generation requests being served.").get()),
      ttft_(r.histogram("tessera_time_to_first_token_seconds", "Arrival at the gateway to the first token.",
                        latency_buckets())
                .get()),
      inter_token_(r.histogram("tessera_inter_token_latency_seconds",
                               "Mean gap between a request's tokens after the first (time per output token).",
                               metrics::exponential_buckets(0.0005, 2.0, 14))
                       .get()),
      e2e_(r.histogram("tessera_e2e_request_latency_seconds", "Arrival at the gateway to the end of generation.",
                       latency_buckets())
               .get()),
      tokenize_(r.histogram("tessera_gateway_tokenize_seconds", "Chat template rendering and tokenization of a request.",
                            metrics::exponential_buckets(0.00001, 2.0, 18))
                    .get()),
      router_ready_(r.gauge("tessera_gateway_router_ready", "1 when the router replica answers ready.", {"router"})) {}

void GatewayMetrics::count_request(std::string_view endpoint, int status) {
  requests_.with({std::string(endpoint), std::to_string(status)}).inc();
}
void GatewayMetrics::observe_ttft(double s) { ttft_.observe(s); }
void GatewayMetrics::observe_inter_token(double s) { inter_token_.observe(s); }
void GatewayMetrics::observe_e2e(double s) { e2e_.observe(s); }
void GatewayMetrics::observe_tokenize(double s) { tokenize_.observe(s); }
void GatewayMetrics::set_router_ready(const std::string& address, bool ready) {
  router_ready_.with({address}).set(ready ? 1.0 : 0.0);
}

}  // namespace tessera::gateway
