// tessera-metrics-sample: prints one deterministic exposition that exercises every corner of
// the text format (escaping, UTF-8, +Inf/NaN, negative and fractional values, histograms fed
// from several threads), so tests/e2e/test_metrics_exposition.py can check it with an
// independent parser. Keep the values here in sync with that test.
#include <cstdio>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "tessera/common/metrics.h"

namespace {

constexpr int kNumObserverThreads = 8;
constexpr int kNumRounds = 1000;
// Dyadic values so the histogram sum is exact whatever order the threads add in; 1 and 10
// sit exactly on a bound to pin down that `le` is inclusive.
constexpr double kObservations[] = {0.00390625, 0.0625, 0.09375, 0.125, 0.5, 1.0, 2.5, 10.0, 12.25, 1024.0};

}  // namespace

int main() {
  using tessera::metrics::Registry;
  Registry registry({{"tier", "test"}});

  auto& requests = registry.counter("tessera_sample_requests_total",
                                    "Requests by path.\nA second line with a backslash \\ and \"quotes\".",
                                    {"path", "note"});
  requests.with({"say \"hi\"", "back\\slash"}).inc();
  requests.with({"line1\nline2", "caf\xc3\xa9 \xe2\x9c\x93"}).inc(2);  // "café ✓"
  requests.with({"", "plain"}).inc(0.5);
  requests.with({"", "plain"}).inc(-7);  // ignored: counters never go down

  auto& temperature = registry.gauge("tessera_sample_temperature_celsius", "Temperature.", {"sensor"});
  temperature.with({"negative"}).set(-12.5);
  temperature.with({"fraction"}).set(0.1);
  temperature.with({"large"}).set(1e20);
  temperature.with({"moved"}).inc(3);
  temperature.with({"moved"}).dec(0.25);

  registry.gauge("tessera_sample_inf", "A gauge at +Inf.").get().set(std::numeric_limits<double>::infinity());
  registry.gauge("tessera_sample_nan", "A gauge at NaN.").get().set(std::numeric_limits<double>::quiet_NaN());

  auto& latency = registry.histogram("tessera_sample_latency_seconds", "Latency.", {0.005, 0.1, 1, 10}, {"op"});
  tessera::metrics::Histogram& prefill = latency.with({"prefill"});
  std::vector<std::thread> threads;
  for (int t = 0; t < kNumObserverThreads; ++t) {
    threads.emplace_back([&prefill] {
      for (int round = 0; round < kNumRounds; ++round) {
        for (double v : kObservations) prefill.observe(v);
      }
    });
  }
  for (auto& thread : threads) thread.join();

  const std::string text = registry.expose();
  std::fwrite(text.data(), 1, text.size(), stdout);
  return 0;
}
