// One JSON line per executed step plan, for finding where serving time goes: the step's
// shape (rows, the KV it reads, the attention it computes) next to how long it took and
// how long the worker waited for it. `scripts/bench/serving-model --step-trace FILE`
// sets each traced step beside DESIGN.md's compute/bandwidth cost of the same shape.
//
// Fields of a line:
//   step         the plan's step_id
//   t            seconds from when the trace was opened to the step's start
//   seconds      the step's time in the worker: decoding the plan, the engine's step (on a
//                GPU, until its sampled ids are back), encoding the result
//   ok           false when the plan was refused (a WorkerFault)
//   slices       scheduled slices; decode_rows of them compute one token and sample
//   tokens       tokens computed (every slice's num_tokens)
//   context      tokens of KV read: every slice's start_position + num_tokens
//   attended     (query, key) pairs of causal attention: per slice, the sum over its
//                tokens of position + 1
//   sampled      slices that sample
//
// Thread: record() from the one thread that runs steps.
#pragma once

#include <chrono>
#include <cstdio>
#include <memory>
#include <string>

#include "tessera/common/status.h"
#include "worker/engine/engine.h"

namespace tessera::worker {

class StepTrace {
 public:
  // Creates (or truncates) the file.
  [[nodiscard]] static Result<std::unique_ptr<StepTrace>> open(const std::string& path);
  ~StepTrace();
  StepTrace(const StepTrace&) = delete;
  StepTrace& operator=(const StepTrace&) = delete;

  using Clock = std::chrono::steady_clock;
  // Each line is flushed, so a killed worker leaves whole lines.
  void record(uint64_t step_id, const engine::StepInput& input, Clock::time_point start, Clock::time_point end,
              bool ok);
  // The line record() writes, without the newline.
  [[nodiscard]] static std::string line(uint64_t step_id, const engine::StepInput& input, double start_s,
                                        double seconds, bool ok);

 private:
  explicit StepTrace(std::FILE* f) : file_(f), opened_(Clock::now()) {}
  std::FILE* file_;
  Clock::time_point opened_;
};

}  // namespace tessera::worker
