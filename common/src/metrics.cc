#include "tessera/common/metrics.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <stdexcept>
#include <type_traits>

namespace tessera::metrics {
namespace {

template <typename T>
constexpr std::string_view kind_name() {
  if constexpr (std::is_same_v<T, Counter>) return "counter";
  if constexpr (std::is_same_v<T, Gauge>) return "gauge";
  if constexpr (std::is_same_v<T, Histogram>) return "histogram";
}

// Shortest text that parses back to the same double; exact integers without an exponent
// so counts read naturally.
void append_number(std::string& out, double v) {
  constexpr double kMaxExactInteger = 9007199254740992.0;  // 2^53
  char buf[32];
  if (std::isnan(v)) out += "NaN";
  else if (std::isinf(v)) out += v > 0 ? "+Inf" : "-Inf";
  else if (std::trunc(v) == v && std::fabs(v) <= kMaxExactInteger)
    out.append(buf, std::to_chars(buf, buf + sizeof(buf), static_cast<int64_t>(v)).ptr);
  else
    out.append(buf, std::to_chars(buf, buf + sizeof(buf), v).ptr);
}

void append_number(std::string& out, uint64_t v) {
  char buf[24];
  out.append(buf, std::to_chars(buf, buf + sizeof(buf), v).ptr);
}

template <typename V>
std::string number_text(V v) {
  std::string text;
  append_number(text, v);
  return text;
}

[[noreturn]] void fail(std::string_view what, std::string_view subject) {
  throw std::invalid_argument("metrics: " + std::string(what) + ": '" + std::string(subject) + "'");
}

// Metric names: [a-zA-Z_:][a-zA-Z0-9_:]*; label names the same without ':'.
bool is_valid_name(std::string_view name, bool allow_colon) {
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
                    (allow_colon && c == ':') || (i > 0 && c >= '0' && c <= '9');
    if (!ok) return false;
  }
  return !name.empty();
}

// `le` is only reserved where a histogram adds it; const labels reach histograms too.
void check_label_name(std::string_view name, bool le_reserved) {
  if (!is_valid_name(name, /*allow_colon=*/false)) fail("invalid label name", name);
  if (name.starts_with("__")) fail("label names starting with '__' are reserved", name);
  if (le_reserved && name == "le") fail("label name 'le' is reserved for histogram buckets", name);
}

std::vector<double> checked_bucket_bounds(std::vector<double> bounds) {
  if (bounds.empty()) throw std::invalid_argument("metrics: a histogram needs at least one bucket bound");
  for (size_t i = 0; i < bounds.size(); ++i) {
    if (!std::isfinite(bounds[i])) fail("bucket bounds must be finite, +Inf is implicit", number_text(bounds[i]));
    if (i > 0 && !(bounds[i - 1] < bounds[i])) fail("bucket bounds must increase", number_text(bounds[i]));
  }
  return bounds;
}

// HELP escapes `\` and newline; label values also escape `"`.
void append_escaped(std::string& out, std::string_view s, bool escape_quote) {
  for (char c : s) {
    if (c == '\\') out += "\\\\";
    else if (c == '\n') out += "\\n";
    else if (c == '"' && escape_quote) out += "\\\"";
    else out += c;
  }
}

void append_label(std::string& labels_text, std::string_view name, std::string_view value) {
  if (!labels_text.empty()) labels_text += ',';
  labels_text.append(name).append("=\"");
  append_escaped(labels_text, value, /*escape_quote=*/true);
  labels_text += '"';
}

template <typename V>
void append_sample(std::string& out, std::string_view name, std::string_view suffix,
                   std::string_view labels_text, V value) {
  out.append(name).append(suffix);
  if (!labels_text.empty()) out.append("{").append(labels_text).append("}");
  out += ' ';
  append_number(out, value);
  out += '\n';
}

}  // namespace

void Counter::inc(double v) {
  if (!(v >= 0.0)) return;  // also rejects NaN
  value_.fetch_add(v, std::memory_order_relaxed);
}

void Counter::advance_to(double total, double& last_total) {
  inc(total >= last_total ? total - last_total : total);
  last_total = total;
}

Histogram::Histogram(std::vector<double> bucket_bounds)
    : bucket_bounds_(checked_bucket_bounds(std::move(bucket_bounds))),
      bucket_counts_(std::make_unique<std::atomic<uint64_t>[]>(bucket_bounds_.size() + 1)) {}

void Histogram::observe(double v) {
  // Written as !(v <= bound) rather than bound < v so NaN runs past every bound into +Inf.
  const auto it = std::partition_point(bucket_bounds_.begin(), bucket_bounds_.end(),
                                       [v](double bound) { return !(v <= bound); });
  bucket_counts_[it - bucket_bounds_.begin()].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(v, std::memory_order_relaxed);
}

HistogramSnapshot Histogram::snapshot() const {
  HistogramSnapshot snap;
  snap.bucket_bounds = bucket_bounds_;
  snap.cumulative_counts.reserve(bucket_bounds_.size() + 1);
  for (size_t i = 0; i <= bucket_bounds_.size(); ++i) {
    snap.count += bucket_counts_[i].load(std::memory_order_relaxed);
    snap.cumulative_counts.push_back(snap.count);
  }
  snap.sum = sum_.load(std::memory_order_relaxed);
  return snap;
}

std::vector<double> exponential_buckets(double start, double factor, int count) {
  if (!(start > 0.0 && std::isfinite(start))) fail("exponential_buckets: start must be > 0", number_text(start));
  if (!(factor > 1.0 && std::isfinite(factor))) fail("exponential_buckets: factor must be > 1", number_text(factor));
  if (count < 1) fail("exponential_buckets: count must be >= 1", std::to_string(count));
  std::vector<double> bounds;
  for (double bound = start; static_cast<int>(bounds.size()) < count; bound *= factor) bounds.push_back(bound);
  return checked_bucket_bounds(std::move(bounds));  // catches overflow to +Inf
}

std::vector<double> linear_buckets(double start, double width, int count) {
  if (!std::isfinite(start)) fail("linear_buckets: start must be finite", number_text(start));
  if (!(width > 0.0 && std::isfinite(width))) fail("linear_buckets: width must be > 0", number_text(width));
  if (count < 1) fail("linear_buckets: count must be >= 1", std::to_string(count));
  std::vector<double> bounds;
  for (int i = 0; i < count; ++i) bounds.push_back(start + i * width);
  return checked_bucket_bounds(std::move(bounds));  // catches overflow and a width lost to rounding
}

template <typename T>
Family<T>::Family(std::string name, std::string help, std::vector<std::string> label_names,
                  std::vector<double> bucket_bounds)
    : name_(std::move(name)),
      help_(std::move(help)),
      label_names_(std::move(label_names)),
      bucket_bounds_(std::move(bucket_bounds)) {
  if (label_names_.empty()) {
    unlabelled_ = children_.emplace(std::vector<std::string>{}, make_child()).first->second.get();
  }
}

template <typename T>
std::unique_ptr<T> Family<T>::make_child() const {
  if constexpr (std::is_same_v<T, Histogram>) return std::make_unique<Histogram>(bucket_bounds_);
  else return std::make_unique<T>();
}

template <typename T>
T& Family<T>::with(const std::vector<std::string>& label_values) {
  if (label_values.size() != label_names_.size()) {
    fail("expected " + std::to_string(label_names_.size()) + " label values, got " +
             std::to_string(label_values.size()),
         name_);
  }
  std::lock_guard lock(mutex_);
  auto it = children_.find(label_values);
  if (it == children_.end()) it = children_.emplace(label_values, make_child()).first;
  return *it->second;
}

template <typename T>
T& Family<T>::get() {
  if (unlabelled_ == nullptr) fail("family has labels, use with()", name_);
  return *unlabelled_;
}

template class Family<Counter>;
template class Family<Gauge>;
template class Family<Histogram>;

Registry::Registry(Labels const_labels) : const_labels_(std::move(const_labels)) {
  for (size_t i = 0; i < const_labels_.size(); ++i) {
    const auto& [name, value] = const_labels_[i];
    check_label_name(name, /*le_reserved=*/true);
    for (size_t j = 0; j < i; ++j) {
      if (const_labels_[j].first == name) fail("duplicate const label", name);
    }
    append_label(const_labels_text_, name, value);
  }
}

template <typename T>
Family<T>& Registry::add(std::string_view name, std::string_view help, std::vector<std::string> label_names,
                         std::vector<double> bucket_bounds) {
  constexpr bool kIsHistogram = std::is_same_v<T, Histogram>;
  if (!is_valid_name(name, /*allow_colon=*/true)) fail("invalid metric name", name);
  for (size_t i = 0; i < label_names.size(); ++i) {
    check_label_name(label_names[i], /*le_reserved=*/kIsHistogram);
    for (size_t j = 0; j < i; ++j) {
      if (label_names[j] == label_names[i]) fail("duplicate label name", label_names[i]);
    }
    for (const auto& const_label : const_labels_) {
      if (const_label.first == label_names[i]) fail("label name is already a const label", label_names[i]);
    }
  }
  if constexpr (kIsHistogram) bucket_bounds = checked_bucket_bounds(std::move(bucket_bounds));

  std::lock_guard lock(mutex_);
  if (auto it = families_.find(name); it != families_.end()) {
    auto* existing = std::get_if<std::unique_ptr<Family<T>>>(&it->second);
    if (existing != nullptr && (*existing)->label_names_ == label_names &&
        (*existing)->bucket_bounds_ == bucket_bounds) {
      return **existing;
    }
    fail("already registered with a different kind, label names or buckets", name);
  }
  std::vector<std::string> sample_names;
  if constexpr (kIsHistogram) {
    for (const char* suffix : {"_bucket", "_sum", "_count"}) sample_names.push_back(std::string(name) + suffix);
  } else {
    sample_names.emplace_back(name);
  }
  for (const auto& sample_name : sample_names) {
    if (sample_names_.contains(sample_name)) fail("sample name already used by another family", sample_name);
  }
  sample_names_.insert(sample_names.begin(), sample_names.end());

  auto family = std::unique_ptr<Family<T>>(
      new Family<T>(std::string(name), std::string(help), std::move(label_names), std::move(bucket_bounds)));
  Family<T>& result = *family;
  families_.emplace(std::string(name), std::move(family));
  return result;
}

Family<Counter>& Registry::counter(std::string_view name, std::string_view help,
                                   std::vector<std::string> label_names) {
  return add<Counter>(name, help, std::move(label_names), {});
}

Family<Gauge>& Registry::gauge(std::string_view name, std::string_view help,
                               std::vector<std::string> label_names) {
  return add<Gauge>(name, help, std::move(label_names), {});
}

Family<Histogram>& Registry::histogram(std::string_view name, std::string_view help,
                                       std::vector<double> bucket_bounds,
                                       std::vector<std::string> label_names) {
  return add<Histogram>(name, help, std::move(label_names), std::move(bucket_bounds));
}

template <typename T>
void Registry::append_family(std::string& out, const Family<T>& family) const {
  std::lock_guard lock(family.mutex_);
  if (family.children_.empty()) return;
  const std::string& name = family.name_;
  out.append("# HELP ").append(name).append(" ");
  append_escaped(out, family.help_, /*escape_quote=*/false);
  out.append("\n# TYPE ").append(name).append(" ").append(kind_name<T>()).append("\n");
  for (const auto& [label_values, child] : family.children_) {
    std::string labels_text = const_labels_text_;
    for (size_t i = 0; i < label_values.size(); ++i) {
      append_label(labels_text, family.label_names_[i], label_values[i]);
    }
    if constexpr (std::is_same_v<T, Histogram>) {
      const HistogramSnapshot snap = child->snapshot();
      for (size_t i = 0; i < snap.cumulative_counts.size(); ++i) {
        const bool is_inf_bucket = i == snap.bucket_bounds.size();
        std::string bucket_labels = labels_text;
        append_label(bucket_labels, "le", is_inf_bucket ? "+Inf" : number_text(snap.bucket_bounds[i]));
        append_sample(out, name, "_bucket", bucket_labels, snap.cumulative_counts[i]);
      }
      append_sample(out, name, "_sum", labels_text, snap.sum);
      append_sample(out, name, "_count", labels_text, snap.count);
    } else {
      append_sample(out, name, "", labels_text, child->value());
    }
  }
}

std::string Registry::expose() const {
  std::string out;
  std::lock_guard lock(mutex_);
  for (const auto& [name, family] : families_) {
    std::visit([&](const auto& f) { append_family(out, *f); }, family);
  }
  return out;
}

}  // namespace tessera::metrics
