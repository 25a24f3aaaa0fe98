// Options of `tessera generate`, shared by its generation and --benchmark modes.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "launcher/commands.h"
#include "worker/engine/engine.h"
#include "worker/engine/sampler.h"

namespace tessera::launcher {

struct GenerateOptions {
  std::string model = "default";
  std::optional<std::string> prompt;
  std::optional<std::vector<int32_t>> prompt_ids;
  bool chat = false;  // render the prompt as one user message with the chat template
  uint32_t max_tokens = 64;
  bool ignore_eos = false;
  engine::SamplingOptions sampling;  // temperature defaults to 0 (greedy) here
  uint32_t num_logprobs = 0;
  bool json = false;
  engine::EngineOptions engine;
  engine::LoadFormat load_format = engine::LoadFormat::kAuto;
  uint64_t dummy_seed = 0;
  // --benchmark
  bool benchmark = false;
  int64_t bench_prompt_tokens = 512;
  int64_t bench_decode_prompt_tokens = 64;
  int64_t bench_decode_tokens = 128;
  std::vector<int64_t> bench_concurrency{1, 4, 16};
  int bench_repeats = 3;
  std::string error;  // usage error, if any
};

GenerateOptions parse_generate_args(const Args& args);
int run_generate_benchmark(const GenerateOptions& options, const engine::ModelSource& source);

// Token ids of the benchmark workloads (`generate --benchmark`, `loadgen`): prompt `seq`
// of `n` ids, all ids in [17, vocab) (the test model's first 17 ids are special).
int32_t workload_token(int64_t seq, int64_t i, int64_t vocab);
std::vector<int32_t> workload_prompt(int64_t seq, int64_t n, int64_t vocab);

}  // namespace tessera::launcher
