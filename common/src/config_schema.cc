#include "config_schema.h"

#include <array>
#include <charconv>
#include <limits>
#include <utility>

namespace tessera {
namespace {

template <typename E>
struct EnumName {
  E value;
  std::string_view name;
};

constexpr std::array kDeviceNames = {EnumName<Device>{Device::kAuto, "auto"}, EnumName<Device>{Device::kCpu, "cpu"},
                                     EnumName<Device>{Device::kCuda, "cuda"}};
constexpr std::array kLoadFormatNames = {
    EnumName<LoadFormat>{LoadFormat::kAuto, "auto"}, EnumName<LoadFormat>{LoadFormat::kGguf, "gguf"},
    EnumName<LoadFormat>{LoadFormat::kSafetensors, "safetensors"}, EnumName<LoadFormat>{LoadFormat::kDummy, "dummy"}};
constexpr std::array kDtypeNames = {
    EnumName<WeightDtype>{WeightDtype::kAuto, "auto"}, EnumName<WeightDtype>{WeightDtype::kBf16, "bf16"},
    EnumName<WeightDtype>{WeightDtype::kF16, "f16"}, EnumName<WeightDtype>{WeightDtype::kF32, "f32"}};
constexpr std::array kLogLevelNames = {
    EnumName<LogLevel>{LogLevel::kTrace, "trace"}, EnumName<LogLevel>{LogLevel::kDebug, "debug"},
    EnumName<LogLevel>{LogLevel::kInfo, "info"},   EnumName<LogLevel>{LogLevel::kWarn, "warn"},
    EnumName<LogLevel>{LogLevel::kError, "error"}, EnumName<LogLevel>{LogLevel::kOff, "off"}};
constexpr std::array kLogFormatNames = {EnumName<LogFormat>{LogFormat::kText, "text"},
                                        EnumName<LogFormat>{LogFormat::kJson, "json"}};

template <typename E>
constexpr const auto& names_of() {
  if constexpr (std::is_same_v<E, Device>) return kDeviceNames;
  else if constexpr (std::is_same_v<E, LoadFormat>) return kLoadFormatNames;
  else if constexpr (std::is_same_v<E, WeightDtype>) return kDtypeNames;
  else if constexpr (std::is_same_v<E, LogLevel>) return kLogLevelNames;
  else return kLogFormatNames;
}

template <typename E>
std::string_view enum_to_string(E v) {
  for (const auto& n : names_of<E>()) {
    if (n.value == v) return n.name;
  }
  return "?";
}

std::string node_kind(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Null: return "nothing (null)";
    case YAML::NodeType::Sequence: return "a list";
    case YAML::NodeType::Map: return "a mapping";
    case YAML::NodeType::Scalar: return "'" + node.Scalar() + "'";
    default: return "an undefined value";
  }
}

Status type_error(const std::string& expected, const YAML::Node& node) {
  return invalid_argument("expected " + expected + ", got " + node_kind(node));
}

// Converters from a YAML node to each member type. Strict: "16.5" is not an integer,
// "yes" is not a boolean, a list is not a string.
template <typename T>
struct Codec;

template <typename Int>
  requires std::is_integral_v<Int> && (!std::is_same_v<Int, bool>)
struct Codec<Int> {
  static std::string type() { return std::is_same_v<Int, uint32_t> ? "uint32" : "uint64"; }
  static Status parse(const YAML::Node& node, Int& out) {
    if (!node.IsScalar()) return type_error("an unsigned integer", node);
    const std::string& s = node.Scalar();
    Int v{};
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec == std::errc::result_out_of_range) {
      return invalid_argument("'" + s + "' is out of range (at most " + std::to_string(std::numeric_limits<Int>::max()) + ")");
    }
    if (ec != std::errc() || end != s.data() + s.size() || s.empty()) return type_error("an unsigned integer", node);
    out = v;
    return Status::ok();
  }
  static void emit(YAML::Emitter& e, Int v) { e << v; }
};

template <>
struct Codec<double> {
  static std::string type() { return "number"; }
  static Status parse(const YAML::Node& node, double& out) {
    if (!node.IsScalar()) return type_error("a number", node);
    const std::string& s = node.Scalar();
    double v = 0;
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc() || end != s.data() + s.size() || s.empty() || v != v) return type_error("a number", node);
    out = v;
    return Status::ok();
  }
  static void emit(YAML::Emitter& e, double v) { e << v; }
};

template <>
struct Codec<bool> {
  static std::string type() { return "bool"; }
  static Status parse(const YAML::Node& node, bool& out) {
    if (node.IsScalar()) {
      const std::string& s = node.Scalar();
      if (s == "true" || s == "True") { out = true; return Status::ok(); }
      if (s == "false" || s == "False") { out = false; return Status::ok(); }
    }
    return type_error("true or false", node);
  }
  static void emit(YAML::Emitter& e, bool v) { e << v; }
};

template <>
struct Codec<std::string> {
  static std::string type() { return "string"; }
  static Status parse(const YAML::Node& node, std::string& out) {
    if (node.IsNull()) { out.clear(); return Status::ok(); }  // `key:` means empty
    if (!node.IsScalar()) return type_error("a string", node);
    out = node.Scalar();
    return Status::ok();
  }
  static void emit(YAML::Emitter& e, const std::string& v) { e << YAML::DoubleQuoted << v; }
};

template <>
struct Codec<std::vector<std::string>> {
  static std::string type() { return "list of strings"; }
  static Status parse(const YAML::Node& node, std::vector<std::string>& out) {
    if (node.IsNull()) { out.clear(); return Status::ok(); }
    if (!node.IsSequence()) return type_error("a list of strings", node);
    std::vector<std::string> v;
    for (std::size_t i = 0; i < node.size(); ++i) {
      if (!node[i].IsScalar()) {
        return invalid_argument("item " + std::to_string(i) + ": expected a string, got " + node_kind(node[i]));
      }
      v.push_back(node[i].Scalar());
    }
    out = std::move(v);
    return Status::ok();
  }
  static void emit(YAML::Emitter& e, const std::vector<std::string>& v) {
    e << YAML::Flow << YAML::BeginSeq;
    for (const auto& s : v) e << YAML::DoubleQuoted << s;
    e << YAML::EndSeq;
  }
};

template <typename E>
  requires std::is_enum_v<E>
struct Codec<E> {
  static std::string choices() {
    std::string s;
    for (const auto& n : names_of<E>()) {
      if (!s.empty()) s += ", ";
      s += n.name;
    }
    return s;
  }
  static std::string type() { return "one of: " + choices(); }
  static Status parse(const YAML::Node& node, E& out) {
    if (node.IsScalar()) {
      for (const auto& n : names_of<E>()) {
        if (node.Scalar() == n.name) { out = n.value; return Status::ok(); }
      }
    }
    return type_error("one of " + choices(), node);
  }
  static void emit(YAML::Emitter& e, E v) { e << std::string(enum_to_string(v)); }
};

template <typename Section, typename T>
config_internal::FieldSpec field(std::string key, Section Config::*section, T Section::*member, std::string help) {
  config_internal::FieldSpec f;
  f.key = std::move(key);
  f.type = Codec<T>::type();
  f.help = std::move(help);
  f.set = [section, member](Config& c, const YAML::Node& node) { return Codec<T>::parse(node, c.*section.*member); };
  f.emit = [section, member](const Config& c, YAML::Emitter& e) { Codec<T>::emit(e, c.*section.*member); };
  return f;
}

std::vector<config_internal::FieldSpec> build_schema() {
  using C = Config;
  return {
      field("model.path", &C::model, &ModelSettings::path,
            "GGUF file, Hugging Face model directory, or `config.json` (dummy format); `default` is the test model fetched by scripts/fetch-model."),
      field("model.served_name", &C::model, &ModelSettings::served_name,
            "Name clients pass as `model`; empty derives it from the path."),
      field("model.load_format", &C::model, &ModelSettings::load_format,
            "How to read `path`; `auto` decides from the file type; `dummy` fills the config's shapes with seeded random weights."),
      field("model.dtype", &C::model, &ModelSettings::dtype,
            "Data type of unquantized weights on the device; `auto` keeps the file's (bf16 on GPU)."),
      field("model.dummy_seed", &C::model, &ModelSettings::dummy_seed, "Seed of the dummy format's random weights."),
      field("model.max_model_len_tokens", &C::model, &ModelSettings::max_model_len_tokens,
            "Cap on prompt + output tokens; 0 uses the model's context length."),
      field("model.chat_template_path", &C::model, &ModelSettings::chat_template_path,
            "Jinja chat template that replaces the model's own; empty keeps the model's."),
      field("model.tokenizer_path", &C::model, &ModelSettings::tokenizer_path,
            "GGUF file, tokenizer.json or directory the gateway takes the tokenizer and chat template from "
            "instead of model.path (e.g. for a dummy-weight config.json); empty: the model's own."),
      field("model.cache_dir", &C::model, &ModelSettings::cache_dir, "Where fetched models are cached."),

      field("gateway.host", &C::gateway, &GatewaySettings::host, "Address the HTTP server binds."),
      field("gateway.port", &C::gateway, &GatewaySettings::port, "HTTP port of the OpenAI-compatible API (1-65535)."),
      field("gateway.routers", &C::gateway, &GatewaySettings::routers,
            "Router replicas (`host:port`) the gateway spreads requests over."),
      field("gateway.api_keys", &C::gateway, &GatewaySettings::api_keys,
            "Accepted `Authorization: Bearer` keys; empty disables authentication. /metrics and /health never need one."),
      field("gateway.max_body_bytes", &C::gateway, &GatewaySettings::max_body_bytes,
            "Largest request body; larger ones get HTTP 413 (at least 1024)."),
      field("gateway.max_concurrent_requests", &C::gateway, &GatewaySettings::max_concurrent_requests,
            "Requests in flight before new ones get HTTP 429 with Retry-After."),
      field("gateway.request_timeout_s", &C::gateway, &GatewaySettings::request_timeout_s,
            "Deadline of one request, end to end, in seconds."),
      field("gateway.num_threads", &C::gateway, &GatewaySettings::num_threads, "I/O threads of the HTTP server."),
      field("gateway.drain_timeout_s", &C::gateway, &GatewaySettings::drain_timeout_s,
            "On SIGTERM, in-flight requests get this long to finish (new ones get 503)."),

      field("router.listen", &C::router, &RouterSettings::listen, "gRPC address (`host:port`) for gateways and workers."),
      field("router.metrics_port", &C::router, &RouterSettings::metrics_port, "HTTP port of the router's /metrics and /health."),
      field("router.max_num_seqs", &C::router, &RouterSettings::max_num_seqs, "Most sequences in one step (per worker group)."),
      field("router.max_num_batched_tokens", &C::router, &RouterSettings::max_num_batched_tokens,
            "Token budget of one step, shared by decode tokens and prefill chunks; at least max_num_seqs."),
      field("router.max_waiting_requests", &C::router, &RouterSettings::max_waiting_requests,
            "Bound of the waiting queue in requests; beyond it requests are rejected (429)."),
      field("router.max_waiting_tokens", &C::router, &RouterSettings::max_waiting_tokens,
            "Bound of the waiting queue in prompt tokens."),
      field("router.enable_prefix_cache", &C::router, &RouterSettings::enable_prefix_cache,
            "Reuse KV pages of shared prompt prefixes (radix tree over token ids)."),
      field("router.watchdog_timeout_s", &C::router, &RouterSettings::watchdog_timeout_s,
            "A step loop without progress for this long marks the router unhealthy and fails its in-flight requests."),
      field("router.drain_timeout_s", &C::router, &RouterSettings::drain_timeout_s,
            "On SIGTERM, how long in-flight requests may run before they are aborted."),
      field("router.worker_timeout_s", &C::router, &RouterSettings::worker_timeout_s,
            "A worker rank silent this long (no result, no heartbeat) is lost: its group's requests end with an error."),
      field("router.prefill_chunk_tokens", &C::router, &RouterSettings::prefill_chunk_tokens,
            "Most prompt tokens one sequence advances per step (chunked prefill); 0: only the step budget bounds it."),
      field("router.admission_batch", &C::router, &RouterSettings::admission_batch,
            "Admit waiting requests only once this many sequence slots are free, or as many as are waiting: under "
            "saturation, fewer and larger prefill steps (more throughput, longer pauses between a running request's "
            "tokens); 1: whenever a slot frees. At most max_num_seqs."),
      field("router.overlap", &C::router, &RouterSettings::overlap,
            "Stream a step's tokens and queue new requests while the worker runs the next step (false: before sending it)."),
      field("router.pipeline_depth", &C::router, &RouterSettings::pipeline_depth,
            "Plans in flight per worker group: 2 plans and sends step N+1 while the worker computes step N; 1 waits for each result."),

      field("worker.router_address", &C::worker, &WorkerSettings::router_address,
            "Router to attach to (`host:port`; a Service name on Kubernetes)."),
      field("worker.device", &C::worker, &WorkerSettings::device, "Compute device; `auto` picks CUDA when a GPU is visible."),
      field("worker.device_index", &C::worker, &WorkerSettings::device_index, "CUDA device ordinal."),
      field("worker.group", &C::worker, &WorkerSettings::group,
            "Data-parallel group this worker belongs to; the ranks of a group hold one copy of the model."),
      field("worker.rank", &C::worker, &WorkerSettings::rank, "Rank within the group, below tensor × pipeline parallel size."),
      field("worker.tensor_parallel_size", &C::worker, &WorkerSettings::tensor_parallel_size, "Tensor-parallel ranks per group."),
      field("worker.pipeline_parallel_size", &C::worker, &WorkerSettings::pipeline_parallel_size, "Pipeline stages per group."),
      field("worker.num_threads", &C::worker, &WorkerSettings::num_threads,
            "CPU compute threads; 0 uses one per physical core."),
      field("worker.metrics_port", &C::worker, &WorkerSettings::metrics_port, "HTTP port of the worker's /metrics."),
      field("worker.page_size_tokens", &C::worker, &WorkerSettings::page_size_tokens,
            "Tokens per KV page (1-1024); 1 is token-level, 16 a good GPU default."),
      field("worker.gpu_memory_utilization", &C::worker, &WorkerSettings::gpu_memory_utilization,
            "Share of GPU memory for weights, activations and the KV pool, in (0, 1]."),
      field("worker.cuda_graph_max_context", &C::worker, &WorkerSettings::cuda_graph_max_context,
            "CUDA: capture the decode-step graphs of every batch size for contexts up to this many tokens at "
            "start-up, so serving never pauses to capture one; 0 captures each on first use."),
      field("worker.kv_cache_bytes", &C::worker, &WorkerSettings::kv_cache_bytes,
            "KV pool size in bytes; 0 sizes it automatically (CPU: 8192 tokens; CUDA: what "
            "gpu_memory_utilization leaves after weights and activations)."),
      field("worker.heartbeat_interval_ms", &C::worker, &WorkerSettings::heartbeat_interval_ms,
            "How often the worker tells its router it is alive (during long steps and while idle)."),
      field("worker.step_trace_path", &C::worker, &WorkerSettings::step_trace_path,
            "Write one JSON line per executed step (its rows, KV read, attention and time) to this file, for "
            "`scripts/bench/serving-model --step-trace`; a diagnostic (~150 bytes a step, unbounded); empty: off."),

      field("logging.level", &C::logging, &LoggingSettings::level, "Least severe level that is written."),
      field("logging.format", &C::logging, &LoggingSettings::format, "`text` for people, `json` for one JSON object per line."),
  };
}

}  // namespace

namespace config_internal {

const std::vector<FieldSpec>& schema() {
  static const std::vector<FieldSpec> kSchema = build_schema();
  return kSchema;
}

const FieldSpec* find_field(std::string_view key) {
  for (const auto& f : schema()) {
    if (f.key == key) return &f;
  }
  return nullptr;
}

const std::vector<std::string>& section_names() {
  static const std::vector<std::string> kNames = [] {
    std::vector<std::string> names;
    for (const auto& f : schema()) {
      std::string section = f.key.substr(0, f.key.find('.'));
      if (names.empty() || names.back() != section) names.push_back(section);
    }
    return names;
  }();
  return kNames;
}

}  // namespace config_internal

std::string_view to_string(Device v) { return enum_to_string(v); }
std::string_view to_string(LoadFormat v) { return enum_to_string(v); }
std::string_view to_string(WeightDtype v) { return enum_to_string(v); }
std::string_view to_string(LogLevel v) { return enum_to_string(v); }
std::string_view to_string(LogFormat v) { return enum_to_string(v); }

}  // namespace tessera
