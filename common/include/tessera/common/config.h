// The typed configuration every Tessera process reads: one YAML schema for the gateway,
// router, workers and the launcher, so a single file (or a Helm ConfigMap) configures a
// whole deployment. Values come from defaults, then the YAML file, then `--set key=value`
// overrides, in that order. Errors name the file, line and key.
//
// The reference of every key (docs/CONFIGURATION.md) is generated from the same schema
// that parses them: `tessera config reference`.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tessera/common/status.h"

namespace tessera {

enum class Device { kAuto, kCpu, kCuda };
enum class LoadFormat { kAuto, kGguf, kSafetensors, kDummy };
enum class WeightDtype { kAuto, kBf16, kF16, kF32 };
enum class LogLevel { kTrace, kDebug, kInfo, kWarn, kError, kOff };
enum class LogFormat { kText, kJson };

struct ModelSettings {
  // GGUF file, Hugging Face directory, config.json (dummy), or "default" (the test model).
  std::string path = "default";
  // Name served as the OpenAI `model`; empty: derived from the path.
  std::string served_name;
  LoadFormat load_format = LoadFormat::kAuto;
  WeightDtype dtype = WeightDtype::kAuto;
  // Seed of the dummy load format's random weights.
  uint64_t dummy_seed = 0;
  // Cap on prompt + output tokens; 0: the model's own context length.
  uint32_t max_model_len_tokens = 0;
  // Jinja chat template file overriding the model's; empty: the model's own.
  std::string chat_template_path;
  // Where the gateway takes the tokenizer (and chat template) from instead of the model
  // path: a GGUF file, a tokenizer.json or a directory with one. For models that have no
  // tokenizer of their own, such as a config.json served with the dummy load format.
  std::string tokenizer_path;
  // Directory where `default` and fetched models are cached.
  std::string cache_dir = "~/.cache/tessera/models";
};

struct GatewaySettings {
  std::string host = "0.0.0.0";
  uint32_t port = 8000;
  // Router replicas (host:port) this gateway spreads requests over.
  std::vector<std::string> routers = {"127.0.0.1:50051"};
  // Accepted `Authorization: Bearer` keys; empty: no authentication.
  std::vector<std::string> api_keys;
  uint64_t max_body_bytes = 8ull << 20;
  uint32_t max_concurrent_requests = 1024;
  uint32_t request_timeout_s = 600;
  uint32_t num_threads = 2;
  // On SIGTERM, in-flight requests get this long to finish.
  uint32_t drain_timeout_s = 30;
};

struct RouterSettings {
  // gRPC address for gateways and workers.
  std::string listen = "0.0.0.0:50051";
  // HTTP port of /metrics and /health.
  uint32_t metrics_port = 9101;
  uint32_t max_num_seqs = 256;
  // Token budget of one step, shared by decodes and prefill chunks.
  uint32_t max_num_batched_tokens = 8192;
  uint32_t max_waiting_requests = 1024;
  uint64_t max_waiting_tokens = 1u << 20;
  bool enable_prefix_cache = true;
  // A step loop with no progress for this long marks the router unhealthy and fails
  // its in-flight requests.
  uint32_t watchdog_timeout_s = 30;
  // On SIGTERM, in-flight requests get this long to finish.
  uint32_t drain_timeout_s = 30;
  // A worker rank that sends nothing (no result, no heartbeat) for this long is lost.
  uint32_t worker_timeout_s = 10;
  // Prefill chunk bound per sequence and step (0: only the step budget bounds it).
  uint32_t prefill_chunk_tokens = 0;
  // Admit waiting requests once this many sequence slots are free (or as many as wait):
  // fewer, larger prefill steps under saturation. 1: whenever a slot frees.
  uint32_t admission_batch = 1;
  // Stream a step's tokens while the worker runs the next step, not before sending it.
  bool overlap = true;
  // Plans sent ahead of their results per worker group: 2 plans step N+1 while the worker
  // computes step N; 1 waits for each result.
  uint32_t pipeline_depth = 2;
};

struct WorkerSettings {
  // Router to attach to (host:port; a Service name on Kubernetes).
  std::string router_address = "127.0.0.1:50051";
  Device device = Device::kAuto;
  uint32_t device_index = 0;
  // Data-parallel group this worker belongs to, and its rank inside it.
  std::string group = "g0";
  uint32_t rank = 0;
  uint32_t tensor_parallel_size = 1;
  uint32_t pipeline_parallel_size = 1;
  // CPU threads for compute; 0: one per physical core of the NUMA node.
  uint32_t num_threads = 0;
  uint32_t metrics_port = 9102;
  // KV page size in tokens (1 = token-level, LightLLM's TokenAttention).
  uint32_t page_size_tokens = 16;
  // Share of GPU memory for weights + activations + KV pool.
  double gpu_memory_utilization = 0.9;
  // CUDA: decode graphs for contexts up to this many tokens are captured at start-up (0:
  // each on first use).
  uint32_t cuda_graph_max_context = 2048;
  // CPU KV pool size; 0: sized from max_num_batched_tokens and the model's context.
  uint64_t kv_cache_bytes = 0;
  // How often an attached worker proves it is alive when it has nothing else to send.
  uint32_t heartbeat_interval_ms = 1000;
  // Not empty: one JSON line per executed step plan is written here (a diagnostic).
  std::string step_trace_path;
};

struct LoggingSettings {
  LogLevel level = LogLevel::kInfo;
  LogFormat format = LogFormat::kText;
};

// Where a value came from, for error messages: "file.yaml:12:3", "--set", "default".
struct ConfigOrigin {
  std::string where = "default";
};

struct Config {
  ModelSettings model;
  GatewaySettings gateway;
  RouterSettings router;
  WorkerSettings worker;
  LoggingSettings logging;

  // Origin of every key that was set explicitly, by dotted key ("router.max_num_seqs").
  std::map<std::string, ConfigOrigin, std::less<>> origins;

  // Checks ranges and cross-field rules; the error lists every problem, one per line,
  // each prefixed with its origin and key.
  Status validate() const;
};

struct ConfigSources {
  // YAML file to read; none: defaults only.
  std::optional<std::string> file;
  // "key=value" overrides applied after the file; values are YAML ("[a, b]" for lists).
  std::vector<std::string> overrides;
};

// The file `model.path` names: "default" is the test model in the model cache
// ($TESSERA_MODEL_CACHE, else `cache_dir` with a leading ~ expanded); other paths are
// returned as given. NOT_FOUND when "default" is not in the cache (with how to fetch it).
Result<std::string> resolve_model_path(const ModelSettings& model);
// The OpenAI `model` name a deployment serves: model.served_name, else the model's file
// name without its .gguf extension (or the directory's name), so every tier that reads the
// same config agrees on it.
std::string served_model_name(const ModelSettings& model, const std::string& resolved_path);
inline constexpr const char* kDefaultModelFile = "SmolLM2-135M-Instruct.Q4_1.gguf";

// Loads, applies overrides and validates. Unknown keys and wrong types are errors.
Result<Config> load_config(const ConfigSources& sources);

// The configuration flags every binary takes, from `args`: --config FILE (also -c FILE and
// --config=FILE) and --set KEY=VALUE (also --set=KEY=VALUE), repeatable. INVALID_ARGUMENT,
// worded for a usage error, for a flag without its value or any other argument.
Result<ConfigSources> parse_config_flags(std::span<const std::string> args);
// Parses YAML text (the `name` shows up in errors in place of a file name).
Result<Config> parse_config(std::string_view yaml_text, std::string_view name,
                            const std::vector<std::string>& overrides = {});

// The effective configuration as YAML (every key, with defaults filled in).
std::string dump_config_yaml(const Config& config);
// Markdown table of every key: type, default, description.
std::string config_reference_markdown();

std::string_view to_string(Device v);
std::string_view to_string(LoadFormat v);
std::string_view to_string(WeightDtype v);
std::string_view to_string(LogLevel v);
std::string_view to_string(LogFormat v);

}  // namespace tessera
