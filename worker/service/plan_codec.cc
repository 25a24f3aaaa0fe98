#include "worker/service/plan_codec.h"

#include <algorithm>
#include <limits>
#include <string>

namespace tessera::worker {

engine::SamplingOptions sampling_from_proto(const v1::SamplingParams& p, uint64_t seed) {
  engine::SamplingOptions o;
  o.temperature = p.has_temperature() ? p.temperature() : 1.0f;
  if (p.has_do_sample() && !p.do_sample()) o.temperature = 0.0f;
  if (p.has_top_p()) o.top_p = p.top_p();
  if (p.has_top_k()) o.top_k = p.top_k();
  if (p.has_min_p()) o.min_p = p.min_p();
  if (p.has_repetition_penalty()) o.repetition_penalty = p.repetition_penalty();
  if (p.has_presence_penalty()) o.presence_penalty = p.presence_penalty();
  if (p.has_frequency_penalty()) o.frequency_penalty = p.frequency_penalty();
  for (const auto& [id, bias] : p.logit_bias()) o.logit_bias.emplace_back(id, bias);
  // A map's order is unspecified; the sampler's result must not depend on it.
  std::sort(o.logit_bias.begin(), o.logit_bias.end());
  o.min_tokens = p.min_tokens();
  if (o.min_tokens > 0) o.banned_before_min_tokens.assign(p.stop_token_ids().begin(), p.stop_token_ids().end());
  o.seed = seed;
  o.logprobs = p.logprobs();
  o.num_top_logprobs = p.logprobs() ? p.top_logprobs() : 0;
  return o;
}

namespace {

// The engine numbers pages with int32; the wire with uint32.
Result<int32_t> page_id(uint32_t page, const char* what) {
  if (page > static_cast<uint32_t>(std::numeric_limits<int32_t>::max())) {
    return invalid_argument(std::string(what) + ": page id " + std::to_string(page) + " is out of range");
  }
  return static_cast<int32_t>(page);
}

Result<std::vector<int32_t>> pages_from(const google::protobuf::RepeatedField<uint32_t>& pages, const char* what) {
  std::vector<int32_t> out;
  out.reserve(static_cast<size_t>(pages.size()));
  for (uint32_t p : pages) {
    auto id = page_id(p, what);
    if (!id) return id.status();
    out.push_back(*id);
  }
  return out;
}

}  // namespace

Result<engine::StepInput> step_input_from_proto(const v1::StepPlan& plan) {
  engine::StepInput in;
  for (const v1::NewSequence& n : plan.new_sequences()) {
    engine::NewSequence s;
    s.seq_id = n.seq_id();
    s.token_ids.assign(n.token_ids().begin(), n.token_ids().end());
    s.num_prompt_tokens = n.num_prompt_tokens();
    s.sampling = sampling_from_proto(n.sampling(), n.seed());
    auto pages = pages_from(n.cached_pages(), "cached_pages");
    if (!pages) return pages.status();
    s.cached_pages = std::move(*pages);
    s.num_cached_tokens = n.num_cached_tokens();
    in.new_sequences.push_back(std::move(s));
  }
  for (const v1::ScheduledSequence& sc : plan.scheduled()) {
    engine::ScheduledSlice sl;
    sl.seq_id = sc.seq_id();
    sl.start_position = sc.start_position();
    sl.num_tokens = sc.num_tokens();
    auto pages = pages_from(sc.new_pages(), "new_pages");
    if (!pages) return pages.status();
    sl.new_pages = std::move(*pages);
    sl.sample = sc.sample();
    in.scheduled.push_back(std::move(sl));
  }
  in.released_seq_ids.assign(plan.released_seq_ids().begin(), plan.released_seq_ids().end());
  for (const v1::PageCopy& c : plan.page_copies()) {
    auto src = page_id(c.src_page(), "page_copies");
    if (!src) return src.status();
    auto dst = page_id(c.dst_page(), "page_copies");
    if (!dst) return dst.status();
    in.page_copies.emplace_back(*src, *dst);
  }
  return in;
}

v1::StepResult step_result_to_proto(uint64_t step_id, const engine::StepOutput& output) {
  v1::StepResult r;
  r.set_step_id(step_id);
  for (const engine::SampledToken& s : output.sampled) {
    v1::SampledToken* t = r.add_sampled();
    t->set_seq_id(s.seq_id);
    t->set_token_id(s.sample.token_id);
    // A sequence whose logits were unusable has no token: the router fails it from the
    // WorkerFault the service sends alongside; here it carries no logprobs.
    if (!s.status.is_ok()) continue;
    if (!s.sample.has_logprobs) continue;
    v1::PositionLogprobs* lp = t->mutable_logprobs();
    lp->mutable_chosen()->set_token_id(s.sample.token_id);
    lp->mutable_chosen()->set_logprob(s.sample.logprob);
    for (const engine::TokenLogprob& alt : s.sample.top) {
      v1::TokenLogprob* a = lp->add_top();
      a->set_token_id(alt.token_id);
      a->set_logprob(alt.logprob);
    }
  }
  return r;
}

}  // namespace tessera::worker
