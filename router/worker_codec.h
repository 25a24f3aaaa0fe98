// The router's one codec between the scheduler's native plan/outcome and the wire
// (tessera.v1 WorkerHub messages). Generated proto types stop here (STYLE.md habit 2).
#pragma once

#include <memory>

#include "router/scheduler.h"
#include "tessera/v1/worker.pb.h"

namespace tessera::router {

// What RequestSpec::sampling holds for the service: the request's SamplingParams.
inline std::shared_ptr<const void> sampling_payload(v1::SamplingParams params) {
  return std::make_shared<const v1::SamplingParams>(std::move(params));
}

v1::StepPlan plan_to_proto(const Plan& plan);

// A StepResult as the scheduler takes it; each token's logprobs (when present) ride along
// as a shared v1::PositionLogprobs in SampledToken::extra.
StepOutcome outcome_from_proto(const v1::StepResult& result);

}  // namespace tessera::router
