// Runs a set of generation requests to completion on an Engine without the services:
// `tessera generate`, the engine tests and benchmarks. A small continuous-batching loop —
// decodes first, then prefill chunks within the step's token budget — with KV pages
// reserved for prompt + max_tokens at admission, so a running sequence never runs out.
// (The router's scheduler is the production one; this is its offline cousin.)
//
// Thread: the caller's; it drives the engine's steps.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "worker/engine/engine.h"

namespace tessera::engine {

struct GenerationRequest {
  std::vector<int32_t> prompt;
  SamplingOptions sampling;
  uint32_t max_tokens = 16;
  bool ignore_eos = false;
  std::vector<int32_t> stop_token_ids;
};

enum class GenerationFinish { kLength, kEos, kStopToken, kContextLength, kError };
const char* generation_finish_name(GenerationFinish finish);

struct GenerationResult {
  std::vector<int32_t> tokens;        // generated, the stop token included
  std::vector<SampleResult> samples;  // one per token (logprobs when asked)
  GenerationFinish finish = GenerationFinish::kLength;
  Status error;
  // Logits at the last prompt position (when OfflineRunnerOptions::keep_first_logits).
  std::vector<float> first_logits;
};

struct OfflineRunnerOptions {
  int64_t max_batch_tokens = 0;      // 0: the engine's
  int64_t prefill_chunk_tokens = 0;  // > 0: split prompts into chunks of at most this many
  int64_t max_running = 0;           // 0: the engine's max_sequences
  bool keep_first_logits = false;
};

struct OfflineRunStats {
  int64_t num_steps = 0;
  int64_t num_prefill_tokens = 0;
  int64_t num_decode_tokens = 0;
  int64_t max_running = 0;
  int64_t num_mixed_steps = 0;  // steps holding both prefill chunks and decodes
};

class OfflineRunner {
 public:
  OfflineRunner(Engine& engine, OfflineRunnerOptions options) : engine_(engine), options_(options) {}

  // Results in request order. A request the engine rejects (bad ids, too long) ends with
  // kError and its status; the others run on. Errors of the engine itself fail the run.
  [[nodiscard]] Result<std::vector<GenerationResult>> run(std::span<const GenerationRequest> requests);
  const OfflineRunStats& stats() const { return stats_; }

 private:
  Engine& engine_;
  OfflineRunnerOptions options_;
  OfflineRunStats stats_;
};

}  // namespace tessera::engine
