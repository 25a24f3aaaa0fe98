#include <catch2/catch.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "tessera/common/config.h"

using Catch::Matchers::Contains;
using tessera::Config;
using tessera::parse_config;
using tessera::StatusCode;

namespace {

// Message of a config that must fail to load.
std::string error_of(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  auto r = parse_config(yaml, "tessera.yaml", overrides);
  REQUIRE_FALSE(r.is_ok());
  CHECK(r.status().code() == StatusCode::kInvalidArgument);
  return r.status().message();
}

}  // namespace

TEST_CASE("an empty file gives the documented defaults", "[config]") {
  auto r = parse_config("", "empty.yaml");
  REQUIRE(r.is_ok());
  CHECK(r->model.path == "default");
  CHECK(r->gateway.port == 8000);
  CHECK(r->gateway.routers == std::vector<std::string>{"127.0.0.1:50051"});
  CHECK(r->router.max_num_batched_tokens == 8192);
  CHECK(r->worker.page_size_tokens == 16);
  CHECK(r->worker.gpu_memory_utilization == Approx(0.9));
  CHECK(r->logging.level == tessera::LogLevel::kInfo);
  CHECK(r->origins.empty());
}

TEST_CASE("a valid file sets every kind of value and records where each came from", "[config]") {
  const std::string yaml =
      "model:\n"
      "  path: /models/smol.gguf\n"
      "  load_format: gguf\n"
      "  dummy_seed: 18446744073709551615\n"
      "gateway:\n"
      "  port: 8080\n"
      "  routers: [\"r0:50051\", \"r1:50051\"]\n"
      "  api_keys:\n"
      "    - sk-one\n"
      "router:\n"
      "  enable_prefix_cache: false\n"
      "  max_num_seqs: 64\n"
      "worker:\n"
      "  device: cuda\n"
      "  tensor_parallel_size: 2\n"
      "  rank: 1\n"
      "  gpu_memory_utilization: 0.85\n"
      "logging:\n"
      "  format: json\n";
  auto r = parse_config(yaml, "tessera.yaml");
  REQUIRE(r.is_ok());
  CHECK(r->model.path == "/models/smol.gguf");
  CHECK(r->model.load_format == tessera::LoadFormat::kGguf);
  CHECK(r->model.dummy_seed == 18446744073709551615ull);
  CHECK(r->gateway.port == 8080);
  CHECK(r->gateway.routers == std::vector<std::string>{"r0:50051", "r1:50051"});
  CHECK(r->gateway.api_keys == std::vector<std::string>{"sk-one"});
  CHECK_FALSE(r->router.enable_prefix_cache);
  CHECK(r->router.max_num_seqs == 64);
  CHECK(r->worker.device == tessera::Device::kCuda);
  CHECK(r->worker.rank == 1);
  CHECK(r->worker.gpu_memory_utilization == Approx(0.85));
  CHECK(r->logging.format == tessera::LogFormat::kJson);
  CHECK(r->origins.at("gateway.port").where == "tessera.yaml:6:9");
}

TEST_CASE("YAML syntax errors name the file, line and column", "[config]") {
  std::string m = error_of("gateway:\n  port: [8000\n");
  CHECK_THAT(m, Contains("tessera.yaml:"));
  CHECK_THAT(m, Contains("YAML syntax error"));
}

TEST_CASE("an unknown section is an error with a suggestion", "[config]") {
  std::string m = error_of("routr:\n  max_num_seqs: 4\n");
  CHECK(m == "tessera.yaml:1:1: routr: unknown section (did you mean 'router'?)");
}

TEST_CASE("an unknown key is an error naming the full key, with a suggestion", "[config]") {
  std::string m = error_of("router:\n  max_num_seq: 4\n");
  CHECK(m == "tessera.yaml:2:3: router.max_num_seq: unknown key (did you mean 'max_num_seqs'?)");
}

TEST_CASE("a wrong scalar type is an error naming the key and the value", "[config]") {
  CHECK(error_of("gateway:\n  port: eighty\n") ==
        "tessera.yaml:2:9: gateway.port: expected an unsigned integer, got 'eighty'");
  CHECK(error_of("gateway:\n  port: 80.5\n") ==
        "tessera.yaml:2:9: gateway.port: expected an unsigned integer, got '80.5'");
  CHECK(error_of("router:\n  max_num_seqs: -4\n") ==
        "tessera.yaml:2:17: router.max_num_seqs: expected an unsigned integer, got '-4'");
  CHECK(error_of("router:\n  enable_prefix_cache: yes please\n") ==
        "tessera.yaml:2:24: router.enable_prefix_cache: expected true or false, got 'yes please'");
  CHECK(error_of("worker:\n  gpu_memory_utilization: most\n") ==
        "tessera.yaml:2:27: worker.gpu_memory_utilization: expected a number, got 'most'");
}

TEST_CASE("an integer too large for its field is an out-of-range error", "[config]") {
  CHECK(error_of("gateway:\n  port: 4294967296\n") ==
        "tessera.yaml:2:9: gateway.port: '4294967296' is out of range (at most 4294967295)");
}

TEST_CASE("a structure where a scalar belongs (and the reverse) is an error", "[config]") {
  CHECK(error_of("gateway:\n  port: [1, 2]\n") == "tessera.yaml:2:9: gateway.port: expected an unsigned integer, got a list");
  CHECK(error_of("gateway:\n  routers: r0:50051\n") ==
        "tessera.yaml:2:12: gateway.routers: expected a list of strings, got 'r0:50051'");
  CHECK(error_of("gateway:\n  routers: [[a]]\n") ==
        "tessera.yaml:2:12: gateway.routers: item 0: expected a string, got a list");
  CHECK(error_of("gateway: 8000\n") == "tessera.yaml:1:1: gateway: expected a mapping of keys");
  CHECK(error_of("- a\n- b\n") ==
        "tessera.yaml:1:1: the top level must be a mapping of sections (model, gateway, ...)");
}

TEST_CASE("an enum value outside its choices lists the choices", "[config]") {
  CHECK(error_of("worker:\n  device: tpu\n") ==
        "tessera.yaml:2:11: worker.device: expected one of auto, cpu, cuda, got 'tpu'");
}

TEST_CASE("a key or section given twice is an error", "[config]") {
  CHECK(error_of("gateway:\n  port: 1\n  port: 2\n") == "tessera.yaml:3:3: gateway.port: key given twice");
}

TEST_CASE("range errors name the origin of the offending value", "[config]") {
  CHECK(error_of("gateway:\n  port: 70000\n") ==
        "tessera.yaml:2:9: gateway.port: must be a TCP port in 1..65535 (got 70000)");
  CHECK(error_of("worker:\n  gpu_memory_utilization: 1.5\n") ==
        "tessera.yaml:2:27: worker.gpu_memory_utilization: must be in (0, 1] (got 1.500000)");
  CHECK(error_of("worker:\n  page_size_tokens: 0\n") ==
        "tessera.yaml:2:21: worker.page_size_tokens: must be in 1..1024 (got 0)");
  CHECK(error_of("gateway:\n  routers: [\"no-port\"]\n") ==
        "tessera.yaml:2:12: gateway.routers: must be host:port with a port in 1..65535 (got 'no-port')");
}

TEST_CASE("cross-field rules are checked and name the rule", "[config]") {
  CHECK(error_of("worker:\n  rank: 2\n  tensor_parallel_size: 2\n") ==
        "tessera.yaml:2:9: worker.rank: must be below tensor_parallel_size × pipeline_parallel_size = 2 (got 2)");
  CHECK_THAT(error_of("router:\n  max_num_seqs: 512\n  max_num_batched_tokens: 256\n"),
             Contains("tessera.yaml:3:27: router.max_num_batched_tokens: must be at least router.max_num_seqs (512)"));
  CHECK(error_of("model:\n  load_format: dummy\n") ==
        "tessera.yaml:2:16: model.load_format: the dummy format needs model.path to name a config.json or model directory");
}

TEST_CASE("every problem of a file is reported at once, one per line", "[config]") {
  std::string m = error_of("gateway:\n  port: x\n  prot: 1\nworker:\n  device: gpu\n");
  CHECK(m ==
        "tessera.yaml:2:9: gateway.port: expected an unsigned integer, got 'x'\n"
        "tessera.yaml:3:3: gateway.prot: unknown key (did you mean 'port'?)\n"
        "tessera.yaml:5:11: worker.device: expected one of auto, cpu, cuda, got 'gpu'");
}

TEST_CASE("a value that is wrong only by default-range rules reports 'default' as origin", "[config]") {
  // max_num_batched_tokens keeps its default (8192) while max_num_seqs is raised past it.
  std::string m = error_of("router:\n  max_num_seqs: 10000\n");
  CHECK_THAT(m, Contains("default: router.max_num_batched_tokens: must be at least router.max_num_seqs (10000)"));
}

TEST_CASE("overrides (--set) apply after the file and take YAML values", "[config]") {
  auto r = parse_config("gateway:\n  port: 8080\n", "tessera.yaml",
                        {"gateway.port=9000", "gateway.api_keys=[a, b]", "model.served_name="});
  REQUIRE(r.is_ok());
  CHECK(r->gateway.port == 9000);
  CHECK(r->gateway.api_keys == std::vector<std::string>{"a", "b"});
  CHECK(r->model.served_name.empty());
  CHECK(r->origins.at("gateway.port").where == "--set");
}

TEST_CASE("bad overrides (--set) are errors that quote the override", "[config]") {
  CHECK(error_of("", {"gateway.prot=1"}) ==
        "--set gateway.prot=1: gateway.prot: unknown key (did you mean 'gateway.port'?)");
  CHECK(error_of("", {"gateway.port"}) == "--set gateway.port: expected key=value");
  CHECK(error_of("", {"gateway.port=abc"}) ==
        "--set gateway.port=abc: gateway.port: expected an unsigned integer, got 'abc'");
  CHECK_THAT(error_of("", {"gateway.routers=[a"}), Contains("value is not valid YAML"));
  CHECK(error_of("", {"gateway.port=0"}) == "--set: gateway.port: must be a TCP port in 1..65535 (got 0)");
}

TEST_CASE("a missing file is NOT_FOUND and names the path", "[config]") {
  auto r = tessera::load_config({.file = "/nonexistent/tessera.yaml", .overrides = {}});
  REQUIRE_FALSE(r.is_ok());
  CHECK(r.status().code() == StatusCode::kNotFound);
  CHECK(r.status().message() == "/nonexistent/tessera.yaml: cannot open config file");
}

TEST_CASE("load_config reads a file from disk and reports its path in errors", "[config]") {
  auto path = std::filesystem::temp_directory_path() / "tessera_config_test.yaml";
  {
    std::ofstream(path) << "router:\n  watchdog_timeout_s: 0\n";
  }
  auto r = tessera::load_config({.file = path.string(), .overrides = {}});
  std::filesystem::remove(path);
  REQUIRE_FALSE(r.is_ok());
  CHECK(r.status().message() == path.string() + ":2:23: router.watchdog_timeout_s: must be at least 1");
}

TEST_CASE("dump_config_yaml round-trips through the parser", "[config]") {
  auto original = parse_config("", "x", {"gateway.api_keys=[\"k:1\", \"with space\"]", "worker.device=cpu",
                                         "model.path=/m/a b.gguf", "worker.gpu_memory_utilization=0.75"});
  REQUIRE(original.is_ok());
  std::string dumped = tessera::dump_config_yaml(*original);
  auto again = parse_config(dumped, "dump.yaml");
  REQUIRE(again.is_ok());
  CHECK(tessera::dump_config_yaml(*again) == dumped);
  CHECK(again->gateway.api_keys == original->gateway.api_keys);
  CHECK(again->model.path == "/m/a b.gguf");
  CHECK(again->worker.gpu_memory_utilization == Approx(0.75));
}

TEST_CASE("the reference documents every key the dump contains", "[config]") {
  auto defaults = parse_config("", "x");
  REQUIRE(defaults.is_ok());
  std::string reference = tessera::config_reference_markdown();
  std::string dumped = tessera::dump_config_yaml(*defaults);
  std::istringstream lines(dumped);
  std::string section, line;
  int num_keys = 0;
  while (std::getline(lines, line)) {
    if (line.empty()) continue;
    auto colon = line.find(':');
    if (line[0] != ' ') {
      section = line.substr(0, colon);
    } else {
      std::string key = section + "." + line.substr(2, colon - 2);
      INFO(key);
      CHECK_THAT(reference, Contains("| `" + key + "` |"));
      ++num_keys;
    }
  }
  CHECK(num_keys > 30);
}

TEST_CASE("the sample deployment config loads with the real parser", "[config]") {
  auto r = tessera::load_config({.file = std::string(TESSERA_SOURCE_DIR) + "/deploy/config/tessera.yaml", .overrides = {}});
  INFO(r.status().to_string());
  CHECK(r.is_ok());
}

TEST_CASE("config flags: --config/-c/--config=, repeated --set, and usage errors", "[config]") {
  using tessera::parse_config_flags;
  const std::vector<std::string> args{"-c", "a.yaml", "--set", "router.max_num_seqs=8", "--set=worker.group=g1",
                                      "--config=b.yaml"};
  auto s = parse_config_flags(args);
  REQUIRE(s.is_ok());
  REQUIRE(s->file == "b.yaml");  // the last one wins
  REQUIRE(s->overrides == std::vector<std::string>{"router.max_num_seqs=8", "worker.group=g1"});
  REQUIRE(parse_config_flags(std::vector<std::string>{}).is_ok());
  const std::vector<std::string> dangling{"--set"};
  REQUIRE(parse_config_flags(dangling).status().message() == "--set needs a value");
  const std::vector<std::string> unknown{"--frobnicate"};
  REQUIRE(parse_config_flags(unknown).status().message() == "unknown argument '--frobnicate'");
}
