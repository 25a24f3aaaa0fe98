// The worker's one codec between the wire (tessera.v1 WorkerHub messages) and the engine's
// native types: a StepPlan becomes an engine::StepInput, a StepOutput a StepResult.
// Generated proto types stop here (STYLE.md habit 2).
#pragma once

#include "tessera/common/status.h"
#include "tessera/v1/worker.pb.h"
#include "worker/engine/engine.h"

namespace tessera::worker {

// SamplingParams → the sampler's options (temperature unset = 1, do_sample=false = greedy,
// seed = the router's). Range checks are the sampler's validate(), run by the engine.
engine::SamplingOptions sampling_from_proto(const v1::SamplingParams& params, uint64_t seed);

// INVALID_ARGUMENT for values that do not fit the native types (negative page ids, ...).
[[nodiscard]] Result<engine::StepInput> step_input_from_proto(const v1::StepPlan& plan);

// The step's samples in plan order, with logprobs when the sequence asked for them.
v1::StepResult step_result_to_proto(uint64_t step_id, const engine::StepOutput& output);

}  // namespace tessera::worker
