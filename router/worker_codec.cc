#include "router/worker_codec.h"

namespace tessera::router {

v1::StepPlan plan_to_proto(const Plan& plan) {
  v1::StepPlan out;
  out.set_step_id(plan.step_id);
  for (const PlanNewSequence& n : plan.new_sequences) {
    v1::NewSequence* s = out.add_new_sequences();
    s->set_seq_id(n.seq_id);
    if (n.sampling) *s->mutable_sampling() = *std::static_pointer_cast<const v1::SamplingParams>(n.sampling);
    s->set_seed(n.seed);
    s->mutable_token_ids()->Assign(n.token_ids.begin(), n.token_ids.end());
    s->set_num_prompt_tokens(n.num_prompt_tokens);
    for (int32_t p : n.cached_pages) s->add_cached_pages(static_cast<uint32_t>(p));
    s->set_num_cached_tokens(n.num_cached_tokens);
  }
  for (const PlanSlice& sl : plan.scheduled) {
    v1::ScheduledSequence* s = out.add_scheduled();
    s->set_seq_id(sl.seq_id);
    s->set_start_position(sl.start_position);
    s->set_num_tokens(sl.num_tokens);
    for (int32_t p : sl.new_pages) s->add_new_pages(static_cast<uint32_t>(p));
    s->set_sample(sl.sample);
  }
  out.mutable_released_seq_ids()->Assign(plan.released_seq_ids.begin(), plan.released_seq_ids.end());
  return out;
}

StepOutcome outcome_from_proto(const v1::StepResult& result) {
  StepOutcome out;
  out.step_id = result.step_id();
  for (const v1::SampledToken& t : result.sampled()) {
    SampledToken s;
    s.seq_id = t.seq_id();
    s.token_id = t.token_id();
    if (t.has_logprobs()) s.extra = std::make_shared<const v1::PositionLogprobs>(t.logprobs());
    out.sampled.push_back(std::move(s));
  }
  return out;
}

}  // namespace tessera::router
