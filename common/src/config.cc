#include "tessera/common/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <set>

#include "config_schema.h"
#include "tessera/common/files.h"

namespace tessera {
namespace {

using config_internal::FieldSpec;

std::string location(std::string_view name, const YAML::Mark& mark) {
  std::string s(name);
  if (!mark.is_null()) {
    s += ':' + std::to_string(mark.line + 1) + ':' + std::to_string(mark.column + 1);
  }
  return s;
}

std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diag = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      std::size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

// " (did you mean 'x'?)" for the closest candidate within a small distance, else "".
std::string suggestion(std::string_view wrong, const std::vector<std::string>& candidates) {
  std::string best;
  std::size_t best_distance = 3;
  for (const auto& c : candidates) {
    std::size_t d = edit_distance(wrong, c);
    if (d < best_distance) {
      best_distance = d;
      best = c;
    }
  }
  return best.empty() ? "" : " (did you mean '" + best + "'?)";
}

std::vector<std::string> keys_in_section(std::string_view section) {
  std::vector<std::string> keys;
  for (const auto& f : config_internal::schema()) {
    if (f.key.starts_with(section) && f.key.size() > section.size() && f.key[section.size()] == '.') {
      keys.push_back(f.key.substr(section.size() + 1));
    }
  }
  return keys;
}

std::vector<std::string> all_keys() {
  std::vector<std::string> keys;
  for (const auto& f : config_internal::schema()) keys.push_back(f.key);
  return keys;
}

// Collects every problem instead of stopping at the first, so one run of the loader
// reports all of a file's mistakes.
struct Problems {
  std::vector<std::string> lines;
  void add(const std::string& where, std::string_view key, const std::string& message) {
    std::string line = where;
    if (!key.empty()) {
      line += ": ";
      line += key;
    }
    line += ": " + message;
    lines.push_back(std::move(line));
  }
  Status to_status() const {
    if (lines.empty()) return Status::ok();
    std::string m;
    for (const auto& l : lines) {
      if (!m.empty()) m += '\n';
      m += l;
    }
    return invalid_argument(m);
  }
};

void apply_yaml(const YAML::Node& root, std::string_view name, Config& config, Problems& problems) {
  if (root.IsNull()) return;  // an empty file means all defaults
  if (!root.IsMap()) {
    problems.add(location(name, root.Mark()), "", "the top level must be a mapping of sections (model, gateway, ...)");
    return;
  }
  std::set<std::string> seen_sections;
  for (const auto& section_entry : root) {
    const std::string section = section_entry.first.Scalar();
    const std::string where = location(name, section_entry.first.Mark());
    const auto& sections = config_internal::section_names();
    if (std::find(sections.begin(), sections.end(), section) == sections.end()) {
      problems.add(where, section, "unknown section" + suggestion(section, sections));
      continue;
    }
    if (!seen_sections.insert(section).second) {
      problems.add(where, section, "section given twice");
      continue;
    }
    const YAML::Node& body = section_entry.second;
    if (body.IsNull()) continue;
    if (!body.IsMap()) {
      problems.add(where, section, "expected a mapping of keys");
      continue;
    }
    std::set<std::string> seen_keys;
    for (const auto& entry : body) {
      const std::string leaf = entry.first.Scalar();
      const std::string key = section + "." + leaf;
      const std::string key_where = location(name, entry.first.Mark());
      const FieldSpec* spec = config_internal::find_field(key);
      if (spec == nullptr) {
        problems.add(key_where, key, "unknown key" + suggestion(leaf, keys_in_section(section)));
        continue;
      }
      if (!seen_keys.insert(leaf).second) {
        problems.add(key_where, key, "key given twice");
        continue;
      }
      Status s = spec->set(config, entry.second);
      if (!s.is_ok()) {
        problems.add(location(name, entry.second.Mark()), key, s.message());
        continue;
      }
      config.origins[key] = ConfigOrigin{location(name, entry.second.Mark())};
    }
  }
}

void apply_overrides(const std::vector<std::string>& overrides, Config& config, Problems& problems) {
  for (const auto& ov : overrides) {
    const std::string where = "--set " + ov;
    std::size_t eq = ov.find('=');
    if (eq == std::string::npos || eq == 0) {
      problems.add(where, "", "expected key=value");
      continue;
    }
    const std::string key = ov.substr(0, eq);
    const FieldSpec* spec = config_internal::find_field(key);
    if (spec == nullptr) {
      problems.add(where, key, "unknown key" + suggestion(key, all_keys()));
      continue;
    }
    YAML::Node value;
    try {
      value = YAML::Load(ov.substr(eq + 1));
    } catch (const YAML::Exception& e) {
      problems.add(where, key, "value is not valid YAML: " + e.msg);
      continue;
    }
    Status s = spec->set(config, value);
    if (!s.is_ok()) {
      problems.add(where, key, s.message());
      continue;
    }
    config.origins[key] = ConfigOrigin{"--set"};
  }
}

bool valid_host_port(std::string_view s) {
  std::size_t colon = s.rfind(':');
  if (colon == std::string_view::npos || colon == 0 || colon + 1 >= s.size()) return false;
  std::string_view port = s.substr(colon + 1);
  if (port.size() > 5 || !std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return false;
  }
  int p = std::stoi(std::string(port));
  return p >= 1 && p <= 65535;
}

}  // namespace

Status Config::validate() const {
  Problems problems;
  auto where = [this](std::string_view key) {
    auto it = origins.find(key);
    return it == origins.end() ? std::string("default") : it->second.where;
  };
  auto check = [&](bool ok, std::string_view key, const std::string& message) {
    if (!ok) problems.add(where(key), key, message);
  };
  auto check_port = [&](uint32_t port, std::string_view key) {
    check(port >= 1 && port <= 65535, key, "must be a TCP port in 1..65535 (got " + std::to_string(port) + ")");
  };
  auto check_address = [&](const std::string& address, std::string_view key) {
    check(valid_host_port(address), key, "must be host:port with a port in 1..65535 (got '" + address + "')");
  };

  check(!model.path.empty(), "model.path", "must not be empty");
  check(!(model.load_format == LoadFormat::kDummy && model.path == "default"), "model.load_format",
        "the dummy format needs model.path to name a config.json or model directory");
  check(!model.cache_dir.empty(), "model.cache_dir", "must not be empty");

  check(!gateway.host.empty(), "gateway.host", "must not be empty");
  check_port(gateway.port, "gateway.port");
  check(!gateway.routers.empty(), "gateway.routers", "needs at least one router address");
  for (const auto& r : gateway.routers) check_address(r, "gateway.routers");
  for (const auto& k : gateway.api_keys) check(!k.empty(), "gateway.api_keys", "an API key must not be empty");
  check(gateway.max_body_bytes >= 1024, "gateway.max_body_bytes",
        "must be at least 1024 (got " + std::to_string(gateway.max_body_bytes) + ")");
  check(gateway.max_concurrent_requests >= 1, "gateway.max_concurrent_requests", "must be at least 1");
  check(gateway.request_timeout_s >= 1, "gateway.request_timeout_s", "must be at least 1");
  check(gateway.num_threads >= 1 && gateway.num_threads <= 256, "gateway.num_threads",
        "must be in 1..256 (got " + std::to_string(gateway.num_threads) + ")");

  check_address(router.listen, "router.listen");
  check_port(router.metrics_port, "router.metrics_port");
  check(router.max_num_seqs >= 1, "router.max_num_seqs", "must be at least 1");
  check(router.max_num_batched_tokens >= router.max_num_seqs, "router.max_num_batched_tokens",
        "must be at least router.max_num_seqs (" + std::to_string(router.max_num_seqs) + "), so every running sequence can decode each step (got " +
            std::to_string(router.max_num_batched_tokens) + ")");
  check(router.admission_batch >= 1 && router.admission_batch <= router.max_num_seqs, "router.admission_batch",
        "must be in 1..router.max_num_seqs (got " + std::to_string(router.admission_batch) + ")");
  check(router.max_waiting_requests >= 1, "router.max_waiting_requests", "must be at least 1");
  check(router.max_waiting_tokens >= 1, "router.max_waiting_tokens", "must be at least 1");
  check(router.watchdog_timeout_s >= 1, "router.watchdog_timeout_s", "must be at least 1");
  check(router.worker_timeout_s >= 1, "router.worker_timeout_s", "must be at least 1");
  check(router.pipeline_depth >= 1 && router.pipeline_depth <= 2, "router.pipeline_depth",
        "must be 1 or 2 (got " + std::to_string(router.pipeline_depth) + ")");

  check_address(worker.router_address, "worker.router_address");
  check(!worker.group.empty(), "worker.group", "must not be empty");
  check(worker.tensor_parallel_size >= 1, "worker.tensor_parallel_size", "must be at least 1");
  check(worker.pipeline_parallel_size >= 1, "worker.pipeline_parallel_size", "must be at least 1");
  const uint64_t world = uint64_t{worker.tensor_parallel_size} * worker.pipeline_parallel_size;
  check(worker.rank < world, "worker.rank",
        "must be below tensor_parallel_size × pipeline_parallel_size = " + std::to_string(world) + " (got " +
            std::to_string(worker.rank) + ")");
  check(worker.num_threads <= 4096, "worker.num_threads", "must be at most 4096");
  check_port(worker.metrics_port, "worker.metrics_port");
  check(worker.heartbeat_interval_ms >= 10 && worker.heartbeat_interval_ms <= 60000, "worker.heartbeat_interval_ms",
        "must be in 10..60000 (got " + std::to_string(worker.heartbeat_interval_ms) + ")");
  check(worker.page_size_tokens >= 1 && worker.page_size_tokens <= 1024, "worker.page_size_tokens",
        "must be in 1..1024 (got " + std::to_string(worker.page_size_tokens) + ")");
  check(worker.gpu_memory_utilization > 0.0 && worker.gpu_memory_utilization <= 1.0, "worker.gpu_memory_utilization",
        "must be in (0, 1] (got " + std::to_string(worker.gpu_memory_utilization) + ")");

  return problems.to_status();
}

Result<Config> parse_config(std::string_view yaml_text, std::string_view name, const std::vector<std::string>& overrides) {
  Config config;
  Problems problems;
  try {
    YAML::Node root = YAML::Load(std::string(yaml_text));
    apply_yaml(root, name, config, problems);
  } catch (const YAML::ParserException& e) {
    problems.add(location(name, e.mark), "", "YAML syntax error: " + e.msg);
  } catch (const YAML::Exception& e) {
    problems.add(location(name, e.mark), "", "YAML error: " + e.msg);
  }
  apply_overrides(overrides, config, problems);
  TESSERA_RETURN_IF_ERROR(problems.to_status());
  TESSERA_RETURN_IF_ERROR(config.validate());
  return config;
}

Result<Config> load_config(const ConfigSources& sources) {
  if (!sources.file) return parse_config("", "(no file)", sources.overrides);
  auto text = read_file(*sources.file, "config file");
  if (!text.is_ok()) return text.status();
  return parse_config(*text, *sources.file, sources.overrides);
}

std::string dump_config_yaml(const Config& config) {
  YAML::Emitter out;
  out << YAML::BeginMap;
  std::string open_section;
  for (const auto& f : config_internal::schema()) {
    std::size_t dot = f.key.find('.');
    std::string section = f.key.substr(0, dot);
    if (section != open_section) {
      if (!open_section.empty()) out << YAML::EndMap;
      out << YAML::Key << section << YAML::Value << YAML::BeginMap;
      open_section = section;
    }
    out << YAML::Key << f.key.substr(dot + 1) << YAML::Value;
    f.emit(config, out);
  }
  if (!open_section.empty()) out << YAML::EndMap;
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

std::string config_reference_markdown() {
  const Config defaults;
  std::string md;
  std::string open_section;
  for (const auto& f : config_internal::schema()) {
    std::string section = f.key.substr(0, f.key.find('.'));
    if (section != open_section) {
      md += "\n## `" + section + "`\n\n| key | type | default | meaning |\n|---|---|---|---|\n";
      open_section = section;
    }
    YAML::Emitter e;
    e << YAML::Flow;
    f.emit(defaults, e);
    md += "| `" + f.key + "` | " + f.type + " | `" + std::string(e.c_str()) + "` | " + f.help + " |\n";
  }
  return md;
}

Result<ConfigSources> parse_config_flags(std::span<const std::string> args) {
  ConfigSources sources;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    std::optional<std::string> value;
    std::string flag = a;
    if (const size_t eq = a.find('='); a.starts_with("--") && eq != std::string::npos) {
      flag = a.substr(0, eq);
      value = a.substr(eq + 1);
    }
    if (flag != "--config" && flag != "-c" && flag != "--set") {
      return invalid_argument("unknown argument '" + a + "'");
    }
    if (!value) {
      if (i + 1 >= args.size()) return invalid_argument(flag + " needs a value");
      value = args[++i];
    }
    if (flag == "--set") {
      sources.overrides.push_back(*value);
    } else {
      sources.file = *value;
    }
  }
  return sources;
}

Result<std::string> resolve_model_path(const ModelSettings& model) {
  if (model.path != "default") return model.path;
  std::string dir;
  if (const char* env = std::getenv("TESSERA_MODEL_CACHE"); env != nullptr && *env != '\0') {
    dir = env;
  } else {
    dir = model.cache_dir;
    if (dir.starts_with("~")) {
      const char* home = std::getenv("HOME");
      dir = std::string(home ? home : "") + dir.substr(1);
    }
  }
  std::string path = dir + "/" + kDefaultModelFile;
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    return not_found("the default model is not in " + dir + "; run scripts/fetch-model to download it");
  }
  return path;
}

std::string served_model_name(const ModelSettings& model, const std::string& resolved_path) {
  if (!model.served_name.empty()) return model.served_name;
  std::filesystem::path p(resolved_path);
  if (!p.has_filename()) p = p.parent_path();  // "dir/"
  if (p.filename() == "config.json") p = p.parent_path();
  std::string name = p.filename().string();
  if (p.extension() == ".gguf") name = p.stem().string();
  return name.empty() ? resolved_path : name;
}

}  // namespace tessera
