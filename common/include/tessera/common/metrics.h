// Prometheus metrics: counters, gauges and histograms grouped into labelled families,
// rendered as text exposition format 0.0.4 for each tier's /metrics endpoint.
//
// Threads:
// - Registration (Registry::counter/gauge/histogram) is start-up code. It takes the
//   registry mutex and throws std::invalid_argument on a bad name, label set or bucket
//   list, so a misconfigured metric stops the process before it serves traffic.
// - Family::with() may be called from any thread; it takes the family mutex. The child it
//   returns lives as long as the registry, so hot paths look it up once and keep the
//   reference.
// - Counter/Gauge/Histogram updates may be called from any thread; they are lock-free
//   atomics and concurrent updates never lose an increment.
// - Registry::expose() may be called from any thread, concurrently with everything above.
//   It reads each value atomically, but not all values at one instant.
#pragma once

#include <atomic>
#include <cstdint>
#include <initializer_list>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace tessera::metrics {

inline constexpr std::string_view kExpositionContentType = "text/plain; version=0.0.4; charset=utf-8";

static_assert(std::atomic<double>::is_always_lock_free, "metric updates must not take a lock");

// Name/value pairs, e.g. {{"tier", "router"}, {"model", "smollm2"}}.
using Labels = std::vector<std::pair<std::string, std::string>>;

class Counter {
 public:
  // A counter only goes up: a negative or NaN increment is ignored (a no-op, not an
  // error), so a bad value on a hot path cannot make a rate() go negative.
  void inc(double v = 1.0);
  // For a counter fed from a cumulative total kept elsewhere (a scheduler's or a
  // session's stats): advances by what `total` gained since `last_total` and remembers
  // it. A total that went down belongs to a restarted source, whose whole value is new.
  void advance_to(double total, double& last_total);
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

class Gauge {
 public:
  void set(double v) { value_.store(v, std::memory_order_relaxed); }
  void inc(double v = 1.0) { value_.fetch_add(v, std::memory_order_relaxed); }
  void dec(double v = 1.0) { value_.fetch_sub(v, std::memory_order_relaxed); }
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

struct HistogramSnapshot {
  std::vector<double> bucket_bounds;        // upper bounds, ascending, without +Inf
  std::vector<uint64_t> cumulative_counts;  // [bucket_bounds.size() + 1], last is +Inf
  double sum = 0.0;
  uint64_t count = 0;  // always equals cumulative_counts.back()
};

class Histogram {
 public:
  // bucket_bounds: finite, strictly increasing, non-empty; +Inf is implicit.
  // Throws std::invalid_argument otherwise.
  explicit Histogram(std::vector<double> bucket_bounds);

  // v lands in the first bucket whose bound is >= v (Prometheus `le` semantics); NaN
  // lands only in +Inf and makes the sum NaN, as in the Go client.
  void observe(double v);
  HistogramSnapshot snapshot() const;
  const std::vector<double>& bucket_bounds() const { return bucket_bounds_; }

 private:
  const std::vector<double> bucket_bounds_;
  // Per-bucket (not cumulative) counts, [bucket_bounds_.size() + 1]. There is no separate
  // count: deriving it from the buckets keeps _count == the +Inf bucket in every exposition.
  const std::unique_ptr<std::atomic<uint64_t>[]> bucket_counts_;
  std::atomic<double> sum_{0.0};
};

// Throw std::invalid_argument on a bad argument (start <= 0, factor <= 1, width <= 0,
// count < 1, or a non-finite result).
std::vector<double> exponential_buckets(double start, double factor, int count);
std::vector<double> linear_buckets(double start, double width, int count);

class Registry;

// One metric name and its children, one child per distinct tuple of label values.
template <typename T>
class Family {
 public:
  Family(const Family&) = delete;
  Family& operator=(const Family&) = delete;

  // label_values are in the order of label_names(). Throws std::invalid_argument when
  // their number differs. The returned child is never destroyed before the registry.
  T& with(const std::vector<std::string>& label_values);
  // The single child of a family without labels; no lock. Throws if the family has labels.
  T& get();

  const std::string& name() const { return name_; }
  const std::string& help() const { return help_; }
  const std::vector<std::string>& label_names() const { return label_names_; }

 private:
  friend class Registry;
  Family(std::string name, std::string help, std::vector<std::string> label_names,
         std::vector<double> bucket_bounds);
  std::unique_ptr<T> make_child() const;

  const std::string name_;
  const std::string help_;
  const std::vector<std::string> label_names_;
  const std::vector<double> bucket_bounds_;  // histograms only
  mutable std::mutex mutex_;
  // Ordered by label values so expose() is deterministic; unique_ptr keeps children's
  // addresses stable however the map grows.
  std::map<std::vector<std::string>, std::unique_ptr<T>> children_;
  T* unlabelled_ = nullptr;  // set at construction when label_names_ is empty
};

extern template class Family<Counter>;
extern template class Family<Gauge>;
extern template class Family<Histogram>;

class Registry {
 public:
  // const_labels are added to every sample, before the family's own labels. Throws
  // std::invalid_argument on a bad, reserved (`le`) or repeated label name.
  explicit Registry(Labels const_labels = {});
  // Lets Registry({{"tier", "router"}}) pick this overload rather than find the copy
  // constructor ambiguous with it.
  explicit Registry(std::initializer_list<Labels::value_type> const_labels)
      : Registry(Labels(const_labels)) {}
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // Registering a name again with the same kind, label names (and, for histograms, bucket
  // bounds) returns the existing family and keeps its first help text; any other reuse of
  // the name, or a name that collides with a histogram's _bucket/_sum/_count, throws
  // std::invalid_argument. Names are kept verbatim: a counter named foo_total is exposed
  // as foo_total.
  Family<Counter>& counter(std::string_view name, std::string_view help,
                           std::vector<std::string> label_names = {});
  Family<Gauge>& gauge(std::string_view name, std::string_view help,
                       std::vector<std::string> label_names = {});
  Family<Histogram>& histogram(std::string_view name, std::string_view help,
                               std::vector<double> bucket_bounds,
                               std::vector<std::string> label_names = {});

  // Text exposition format 0.0.4 (serve with kExpositionContentType). Families are sorted
  // by name and children by label values; families without children are left out.
  std::string expose() const;

 private:
  using AnyFamily = std::variant<std::unique_ptr<Family<Counter>>, std::unique_ptr<Family<Gauge>>,
                                 std::unique_ptr<Family<Histogram>>>;

  template <typename T>
  Family<T>& add(std::string_view name, std::string_view help, std::vector<std::string> label_names,
                 std::vector<double> bucket_bounds);
  template <typename T>
  void append_family(std::string& out, const Family<T>& family) const;

  const Labels const_labels_;
  std::string const_labels_text_;  // `a="x",b="y"`, rendered once
  mutable std::mutex mutex_;
  std::map<std::string, AnyFamily, std::less<>> families_;
  // Every sample name in use (a histogram takes three), so two families never emit the same one.
  std::set<std::string, std::less<>> sample_names_;
};

}  // namespace tessera::metrics
