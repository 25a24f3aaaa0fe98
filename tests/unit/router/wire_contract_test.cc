// The router's plan and the worker's step input describe the same step: a scheduler Plan
// through the router codec, the wire bytes and the worker codec arrives as the engine
// input it means; a step's samples (with logprobs) come back as the scheduler's outcome.
#include <catch2/catch.hpp>

#include "router/worker_codec.h"
#include "worker/service/plan_codec.h"

using namespace tessera;

TEST_CASE("a scheduler plan reaches the engine intact through the wire", "[codec]") {
  v1::SamplingParams sp;
  sp.set_temperature(0.7f);
  sp.set_top_p(0.9f);
  sp.set_top_k(40);
  (*sp.mutable_logit_bias())[17] = -5.0f;
  (*sp.mutable_logit_bias())[3] = 2.5f;
  sp.set_logprobs(true);
  sp.set_top_logprobs(3);

  router::Plan plan;
  plan.step_id = 42;
  plan.new_sequences.push_back({7, {1, 2, 3, 4, 5}, 4, {9, 2}, 32, 1234, router::sampling_payload(sp)});
  plan.scheduled.push_back({7, 32, 1, {11}, true});
  plan.scheduled.push_back({8, 0, 16, {}, false});
  plan.released_seq_ids = {3, 5};

  const std::string wire = router::plan_to_proto(plan).SerializeAsString();
  v1::StepPlan received;
  REQUIRE(received.ParseFromString(wire));
  REQUIRE(received.step_id() == 42);
  auto in = worker::step_input_from_proto(received);
  REQUIRE(in.is_ok());
  REQUIRE(in->new_sequences.size() == 1);
  const engine::NewSequence& n = in->new_sequences[0];
  REQUIRE(n.seq_id == 7);
  REQUIRE(n.token_ids == std::vector<int32_t>{1, 2, 3, 4, 5});
  REQUIRE(n.num_prompt_tokens == 4);
  REQUIRE(n.cached_pages == std::vector<int32_t>{9, 2});
  REQUIRE(n.num_cached_tokens == 32);
  REQUIRE(n.sampling.temperature == 0.7f);
  REQUIRE(n.sampling.top_p == 0.9f);
  REQUIRE(n.sampling.top_k == 40);
  REQUIRE(n.sampling.seed == 1234);
  REQUIRE(n.sampling.logprobs);
  REQUIRE(n.sampling.num_top_logprobs == 3);
  // Sorted by id: a map's iteration order must not reach the sampler.
  REQUIRE(n.sampling.logit_bias == std::vector<std::pair<int32_t, float>>{{3, 2.5f}, {17, -5.0f}});
  REQUIRE(in->scheduled.size() == 2);
  REQUIRE(in->scheduled[0].seq_id == 7);
  REQUIRE(in->scheduled[0].start_position == 32);
  REQUIRE(in->scheduled[0].num_tokens == 1);
  REQUIRE(in->scheduled[0].new_pages == std::vector<int32_t>{11});
  REQUIRE(in->scheduled[0].sample);
  REQUIRE(!in->scheduled[1].sample);
  REQUIRE(in->released_seq_ids == std::vector<uint64_t>{3, 5});
}

TEST_CASE("sampling defaults: unset temperature is 1, do_sample=false is greedy", "[codec]") {
  v1::SamplingParams sp;
  REQUIRE(worker::sampling_from_proto(sp, 0).temperature == 1.0f);
  sp.set_temperature(0.8f);
  sp.set_do_sample(false);
  REQUIRE(worker::sampling_from_proto(sp, 0).temperature == 0.0f);
  sp.set_top_logprobs(5);  // without logprobs it is ignored, as OpenAI does
  REQUIRE(worker::sampling_from_proto(sp, 0).num_top_logprobs == 0);
}

TEST_CASE("min_tokens bars the request's stop ids from sampling until then", "[codec]") {
  v1::SamplingParams sp;
  sp.add_stop_token_ids(42);
  sp.add_stop_token_ids(7);
  REQUIRE(worker::sampling_from_proto(sp, 0).banned_before_min_tokens.empty());  // no min_tokens
  sp.set_min_tokens(5);
  const engine::SamplingOptions o = worker::sampling_from_proto(sp, 0);
  REQUIRE(o.min_tokens == 5);
  REQUIRE(o.banned_before_min_tokens == std::vector<int32_t>{42, 7});
}

TEST_CASE("page ids beyond int32 are refused", "[codec]") {
  v1::StepPlan plan;
  plan.add_scheduled()->add_new_pages(0x80000000u);
  REQUIRE(worker::step_input_from_proto(plan).status().code() == StatusCode::kInvalidArgument);
}

TEST_CASE("sampled tokens and their logprobs come back as the scheduler's outcome", "[codec]") {
  engine::StepOutput out;
  engine::SampledToken a;
  a.seq_id = 7;
  a.sample.token_id = 99;
  a.sample.has_logprobs = true;
  a.sample.logprob = -0.25f;
  a.sample.top = {{99, -0.25f}, {12, -1.5f}};
  engine::SampledToken b;
  b.seq_id = 8;
  b.sample.token_id = 5;
  out.sampled = {a, b};
  const std::string wire = worker::step_result_to_proto(42, out).SerializeAsString();
  v1::StepResult received;
  REQUIRE(received.ParseFromString(wire));
  const router::StepOutcome outcome = router::outcome_from_proto(received);
  REQUIRE(outcome.step_id == 42);
  REQUIRE(outcome.sampled.size() == 2);
  REQUIRE(outcome.sampled[0].seq_id == 7);
  REQUIRE(outcome.sampled[0].token_id == 99);
  REQUIRE(outcome.sampled[0].extra);
  const auto& lp = *std::static_pointer_cast<const v1::PositionLogprobs>(outcome.sampled[0].extra);
  REQUIRE(lp.chosen().logprob() == -0.25f);
  REQUIRE(lp.top_size() == 2);
  REQUIRE(lp.top(1).token_id() == 12);
  REQUIRE(!outcome.sampled[1].extra);  // no logprobs asked, none sent
}
