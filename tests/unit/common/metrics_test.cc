#include "tessera/common/metrics.h"

#include <catch2/catch.hpp>

#include <chrono>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using tessera::metrics::Counter;
using tessera::metrics::exponential_buckets;
using tessera::metrics::Gauge;
using tessera::metrics::Histogram;
using tessera::metrics::linear_buckets;
using tessera::metrics::Registry;

namespace {

constexpr int kNumThreads = 16;
constexpr int kNumUpdatesPerThread = 100'000;

template <typename Fn>
void run_threads(int num_threads, Fn fn) {
  std::vector<std::thread> threads;
  for (int t = 0; t < num_threads; ++t) threads.emplace_back(fn, t);
  for (auto& thread : threads) thread.join();
}

}  // namespace

TEST_CASE("expose renders counters, gauges and labelled histograms in exact text format 0.0.4") {
  Registry registry({{"tier", "router"}});
  auto& requests = registry.counter("tessera_requests_total", "Requests served.", {"route", "code"});
  requests.with({"/v1/completions", "200"}).inc(3);
  requests.with({"/v1/chat", "500"}).inc();
  registry.gauge("tessera_queue_depth", "Queued requests.").get().set(-2.5);
  auto& latency = registry.histogram("tessera_latency_seconds", "Latency.", {0.1, 1}, {"route"});
  for (double v : {0.0625, 0.5, 3.0}) latency.with({"/v1/chat"}).observe(v);

  CHECK(registry.expose() ==
        "# HELP tessera_latency_seconds Latency.\n"
        "# TYPE tessera_latency_seconds histogram\n"
        "tessera_latency_seconds_bucket{tier=\"router\",route=\"/v1/chat\",le=\"0.1\"} 1\n"
        "tessera_latency_seconds_bucket{tier=\"router\",route=\"/v1/chat\",le=\"1\"} 2\n"
        "tessera_latency_seconds_bucket{tier=\"router\",route=\"/v1/chat\",le=\"+Inf\"} 3\n"
        "tessera_latency_seconds_sum{tier=\"router\",route=\"/v1/chat\"} 3.5625\n"
        "tessera_latency_seconds_count{tier=\"router\",route=\"/v1/chat\"} 3\n"
        "# HELP tessera_queue_depth Queued requests.\n"
        "# TYPE tessera_queue_depth gauge\n"
        "tessera_queue_depth{tier=\"router\"} -2.5\n"
        "# HELP tessera_requests_total Requests served.\n"
        "# TYPE tessera_requests_total counter\n"
        "tessera_requests_total{tier=\"router\",route=\"/v1/chat\",code=\"500\"} 1\n"
        "tessera_requests_total{tier=\"router\",route=\"/v1/completions\",code=\"200\"} 3\n");
}

TEST_CASE("a family without labels exposes one sample without braces, and a labelled family with no children is omitted") {
  Registry registry;
  registry.counter("ops_total", "Ops.").get().inc(2);
  registry.gauge("unused", "Never touched.", {"worker"});
  CHECK(registry.expose() == "# HELP ops_total Ops.\n# TYPE ops_total counter\nops_total 2\n");
}

TEST_CASE("values print in shortest round-trip form with Prometheus spellings of Inf and NaN") {
  Registry registry;
  auto& gauge = registry.gauge("g", "G.", {"case"});
  gauge.with({"a_fraction"}).set(0.1);
  gauge.with({"b_large"}).set(1e20);
  gauge.with({"c_integer"}).set(123456789012.0);
  gauge.with({"d_tiny"}).set(1e-7);
  gauge.with({"e_pos_inf"}).set(std::numeric_limits<double>::infinity());
  gauge.with({"f_neg_inf"}).set(-std::numeric_limits<double>::infinity());
  gauge.with({"g_nan"}).set(std::numeric_limits<double>::quiet_NaN());
  gauge.with({"h_third"}).set(1.0 / 3.0);
  CHECK(registry.expose() ==
        "# HELP g G.\n# TYPE g gauge\n"
        "g{case=\"a_fraction\"} 0.1\n"
        "g{case=\"b_large\"} 1e+20\n"
        "g{case=\"c_integer\"} 123456789012\n"
        "g{case=\"d_tiny\"} 1e-07\n"
        "g{case=\"e_pos_inf\"} +Inf\n"
        "g{case=\"f_neg_inf\"} -Inf\n"
        "g{case=\"g_nan\"} NaN\n"
        "g{case=\"h_third\"} 0.3333333333333333\n");
}

TEST_CASE("histogram buckets are cumulative, le is inclusive, +Inf equals count and sum is exact") {
  Histogram histogram({1, 2, 4});
  for (double v : {0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 100.0}) histogram.observe(v);
  const auto snap = histogram.snapshot();
  CHECK(snap.bucket_bounds == std::vector<double>{1, 2, 4});
  CHECK(snap.cumulative_counts == std::vector<uint64_t>{2, 4, 6, 7});
  CHECK(snap.count == 7);
  CHECK(snap.sum == 112.0);

  histogram.observe(std::numeric_limits<double>::quiet_NaN());
  const auto with_nan = histogram.snapshot();
  CHECK(with_nan.cumulative_counts == std::vector<uint64_t>{2, 4, 6, 8});
  CHECK(with_nan.count == 8);
  CHECK(std::isnan(with_nan.sum));
}

TEST_CASE("counter ignores negative and NaN increments, gauge moves both ways") {
  Counter counter;
  counter.inc(2.5);
  counter.inc(-1);
  counter.inc(std::numeric_limits<double>::quiet_NaN());
  counter.inc();
  CHECK(counter.value() == 3.5);

  Gauge gauge;
  gauge.set(10);
  gauge.inc(2);
  gauge.dec(4.5);
  gauge.dec();
  CHECK(gauge.value() == 6.5);
}

TEST_CASE("a counter fed from a cumulative total advances by what it gained, and restarts count whole") {
  Counter counter;
  double last = 0;
  counter.advance_to(5, last);
  counter.advance_to(7.5, last);
  CHECK(counter.value() == 7.5);
  CHECK(last == 7.5);
  counter.advance_to(2, last);  // the source restarted from zero
  CHECK(counter.value() == 9.5);
  CHECK(last == 2);
}

TEST_CASE("label values escape backslash, double quote and newline") {
  Registry registry;
  registry.counter("c_total", "C.", {"v"}).with({"a\\b\"c\nd é✓"}).inc();
  CHECK(registry.expose() == "# HELP c_total C.\n# TYPE c_total counter\nc_total{v=\"a\\\\b\\\"c\\nd é✓\"} 1\n");
}

TEST_CASE("HELP escapes backslash and newline but not double quote") {
  Registry registry;
  registry.gauge("g", "first line\nsecond \\ \"quoted\"").get().set(1);
  CHECK(registry.expose() == "# HELP g first line\\nsecond \\\\ \"quoted\"\n# TYPE g gauge\ng 1\n");
}

TEST_CASE("const labels are on every sample, histogram buckets included, and are escaped") {
  Registry registry({{"tier", "router"}, {"model", "small \"lm\""}});
  registry.gauge("g", "G.").get().set(1);
  registry.histogram("h", "H.", {1}).get().observe(0.5);
  CHECK(registry.expose() ==
        "# HELP g G.\n# TYPE g gauge\n"
        "g{tier=\"router\",model=\"small \\\"lm\\\"\"} 1\n"
        "# HELP h H.\n# TYPE h histogram\n"
        "h_bucket{tier=\"router\",model=\"small \\\"lm\\\"\",le=\"1\"} 1\n"
        "h_bucket{tier=\"router\",model=\"small \\\"lm\\\"\",le=\"+Inf\"} 1\n"
        "h_sum{tier=\"router\",model=\"small \\\"lm\\\"\"} 0.5\n"
        "h_count{tier=\"router\",model=\"small \\\"lm\\\"\"} 1\n");
}

TEST_CASE("invalid metric names, label names, const labels and bucket lists throw at registration") {
  Registry registry({{"tier", "router"}});
  for (const char* name : {"", "1abc", "a-b", "a b", "caf\xc3\xa9", "a{b}"}) {
    CAPTURE(name);
    CHECK_THROWS_AS(registry.counter(name, "h"), std::invalid_argument);
  }
  CHECK_NOTHROW(registry.counter("ns:sub_total", "colons are allowed in metric names"));
  CHECK_NOTHROW(registry.gauge("_private", "h"));

  for (const char* label : {"", "1a", "a:b", "a-b", "__reserved", "tier"}) {
    CAPTURE(label);
    CHECK_THROWS_AS(registry.gauge("bad_label", "h", {label}), std::invalid_argument);
  }
  CHECK_THROWS_AS(registry.gauge("dup_label", "h", {"a", "a"}), std::invalid_argument);
  CHECK_THROWS_AS(registry.histogram("h_le", "h", {1}, {"le"}), std::invalid_argument);
  CHECK_NOTHROW(registry.gauge("g_le", "le is only reserved for histograms", {"le"}));

  CHECK_THROWS_AS(Registry({{"__x", "v"}}), std::invalid_argument);
  CHECK_THROWS_AS(Registry({{"le", "v"}}), std::invalid_argument);
  CHECK_THROWS_AS(Registry({{"a", "1"}, {"a", "2"}}), std::invalid_argument);

  const double inf = std::numeric_limits<double>::infinity();
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (const auto& bounds : std::vector<std::vector<double>>{{}, {1, 1}, {2, 1}, {nan}, {1, inf}, {-inf, 0}}) {
    CAPTURE(bounds);
    CHECK_THROWS_AS(registry.histogram("bad_buckets", "h", bounds), std::invalid_argument);
    CHECK_THROWS_AS(Histogram(bounds), std::invalid_argument);
  }
}

TEST_CASE("bucket helpers produce the documented bounds and reject bad arguments") {
  CHECK(exponential_buckets(1, 2, 4) == std::vector<double>{1, 2, 4, 8});
  CHECK(linear_buckets(-1, 0.5, 3) == std::vector<double>{-1, -0.5, 0});
  CHECK_THROWS_AS(exponential_buckets(0, 2, 3), std::invalid_argument);
  CHECK_THROWS_AS(exponential_buckets(1, 1, 3), std::invalid_argument);
  CHECK_THROWS_AS(exponential_buckets(1, 2, 0), std::invalid_argument);
  CHECK_THROWS_AS(exponential_buckets(1e300, 1e10, 3), std::invalid_argument);  // overflows to +Inf
  CHECK_THROWS_AS(linear_buckets(0, 0, 3), std::invalid_argument);
  CHECK_THROWS_AS(linear_buckets(0, -1, 3), std::invalid_argument);
  CHECK_THROWS_AS(linear_buckets(0, 1, 0), std::invalid_argument);
  CHECK_THROWS_AS(linear_buckets(1e20, 1, 3), std::invalid_argument);  // width lost to rounding
}

TEST_CASE("registering a name again returns the same family only for the same kind, labels and buckets") {
  Registry registry;
  auto& counter = registry.counter("requests_total", "first help", {"code"});
  CHECK(&registry.counter("requests_total", "other help is ignored", {"code"}) == &counter);
  CHECK(registry.counter("requests_total", "", {"code"}).help() == "first help");
  CHECK_THROWS_AS(registry.gauge("requests_total", "h", {"code"}), std::invalid_argument);
  CHECK_THROWS_AS(registry.counter("requests_total", "h", {"status"}), std::invalid_argument);
  CHECK_THROWS_AS(registry.counter("requests_total", "h"), std::invalid_argument);

  auto& histogram = registry.histogram("latency", "h", {1, 2});
  CHECK(&registry.histogram("latency", "h", {1, 2}) == &histogram);
  CHECK_THROWS_AS(registry.histogram("latency", "h", {1, 3}), std::invalid_argument);
  // A histogram owns the _bucket/_sum/_count sample names, in both orders of registration.
  CHECK_THROWS_AS(registry.gauge("latency_count", "h"), std::invalid_argument);
  registry.counter("queue_sum", "h");
  CHECK_THROWS_AS(registry.histogram("queue", "h", {1}), std::invalid_argument);
}

TEST_CASE("with() checks the number of label values and returns a stable child per tuple") {
  Registry registry;
  auto& family = registry.counter("c_total", "h", {"a", "b"});
  Counter& child = family.with({"x", "y"});
  for (int i = 0; i < 100; ++i) family.with({"x", std::to_string(i)});  // grow the map
  CHECK(&family.with({"x", "y"}) == &child);
  CHECK_THROWS_AS(family.with({"x"}), std::invalid_argument);
  CHECK_THROWS_AS(family.with({}), std::invalid_argument);
  CHECK_THROWS_AS(family.get(), std::invalid_argument);

  auto& plain = registry.gauge("g", "h");
  CHECK(&plain.with({}) == &plain.get());
  CHECK_THROWS_AS(plain.with({"extra"}), std::invalid_argument);
}

TEST_CASE("16 threads x 100000 counter increments sum exactly, via with() from every thread") {
  Registry registry;
  auto& family = registry.counter("hits_total", "h", {"shard"});
  run_threads(kNumThreads, [&](int) {
    Counter& counter = family.with({"shared"});
    for (int i = 0; i < kNumUpdatesPerThread; ++i) counter.inc();
  });
  CHECK(family.with({"shared"}).value() == double(kNumThreads) * kNumUpdatesPerThread);
}

TEST_CASE("16 threads x 100000 histogram observations give exact counts per bucket and sum") {
  Registry registry;
  Histogram& histogram = registry.histogram("h", "h", {1, 2, 3}).get();
  // One value per bucket, multiples of 0.5, so every partial sum is exact in a double.
  constexpr double kValues[] = {0.5, 1.5, 2.5, 10.0};
  run_threads(kNumThreads, [&](int) {
    for (int i = 0; i < kNumUpdatesPerThread; ++i) histogram.observe(kValues[i % 4]);
  });
  const uint64_t per_bucket = uint64_t{kNumThreads} * kNumUpdatesPerThread / 4;
  const auto snap = histogram.snapshot();
  CHECK(snap.cumulative_counts == std::vector<uint64_t>{per_bucket, 2 * per_bucket, 3 * per_bucket, 4 * per_bucket});
  CHECK(snap.count == uint64_t{kNumThreads} * kNumUpdatesPerThread);
  CHECK(snap.sum == double(per_bucket) * (0.5 + 1.5 + 2.5 + 10.0));
}

TEST_CASE("expose() running concurrently with updates and new children neither crashes nor goes backwards") {
  Registry registry;
  auto& ops = registry.counter("ops_total", "h");
  auto& by_key = registry.gauge("by_key", "h", {"key"});
  auto& latency = registry.histogram("latency", "h", exponential_buckets(0.001, 4, 6), {"key"});
  std::atomic<bool> stop{false};
  std::vector<std::thread> writers;
  for (int t = 0; t < 2; ++t) {
    writers.emplace_back([&, t] {
      for (int i = 0; !stop.load(std::memory_order_relaxed); ++i) {
        const std::string key = std::to_string((i + t) % 16);
        ops.get().inc();
        by_key.with({key}).inc();
        latency.with({key}).observe(i % 100 * 0.001);
      }
    });
  }

  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(500);
  double last_ops = 0;
  int num_exposes = 0;
  for (; num_exposes < 2000 && std::chrono::steady_clock::now() < deadline; ++num_exposes) {
    const std::string text = registry.expose();
    const auto pos = text.find("\nops_total ");
    REQUIRE(pos != std::string::npos);
    const double ops_value = std::stod(text.substr(pos + 11));
    REQUIRE(ops_value >= last_ops);
    last_ops = ops_value;
  }
  stop = true;
  for (auto& writer : writers) writer.join();
  CHECK(num_exposes > 0);
  CHECK(ops.get().value() >= last_ops);
}
