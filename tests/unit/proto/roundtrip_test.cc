#include <catch2/catch.hpp>

#include <google/protobuf/util/message_differencer.h>

#include "tessera/v1/common.pb.h"
#include "tessera/v1/router.grpc.pb.h"
#include "tessera/v1/worker.pb.h"

namespace v1 = tessera::v1;
using google::protobuf::util::MessageDifferencer;

namespace {

template <typename M>
M round_trip(const M& in) {
  std::string wire;
  REQUIRE(in.SerializeToString(&wire));
  M out;
  REQUIRE(out.ParseFromString(wire));
  return out;
}

v1::SamplingParams full_sampling_params() {
  v1::SamplingParams p;
  p.set_temperature(0.7f);
  p.set_top_p(0.9f);
  p.set_top_k(40);
  p.set_min_p(0.05f);
  p.set_repetition_penalty(1.1f);
  p.set_presence_penalty(-0.5f);
  p.set_frequency_penalty(0.25f);
  (*p.mutable_logit_bias())[50256] = -100.0f;
  (*p.mutable_logit_bias())[7] = 2.5f;
  p.set_seed(0xFFFFFFFFFFFFFFFFull);
  p.set_max_tokens(128);
  p.set_min_tokens(4);
  p.set_ignore_eos(true);
  p.add_stop_token_ids(2);
  p.add_stop("\n\nUser:");
  p.add_stop("✓ done");
  p.set_include_stop_token(true);
  p.set_logprobs(true);
  p.set_top_logprobs(5);
  p.set_prompt_logprobs(true);
  p.set_skip_special_tokens(false);
  p.set_spaces_between_special_tokens(true);
  p.set_best_of(2);
  p.set_do_sample(true);
  return p;
}

}  // namespace

TEST_CASE("SamplingParams survive the wire with every field set", "[proto]") {
  v1::SamplingParams p = full_sampling_params();
  v1::SamplingParams q = round_trip(p);
  CHECK(MessageDifferencer::Equals(p, q));
  CHECK(q.logit_bias().at(50256) == -100.0f);
  CHECK(q.stop(1) == "✓ done");
}

TEST_CASE("unset optional sampling fields stay distinguishable from zero", "[proto]") {
  v1::SamplingParams p;
  p.set_temperature(0.0f);  // greedy, explicitly
  v1::SamplingParams q = round_trip(p);
  CHECK(q.has_temperature());
  CHECK(q.temperature() == 0.0f);
  CHECK_FALSE(q.has_top_p());
  CHECK_FALSE(q.has_seed());
  CHECK_FALSE(q.has_max_tokens());
}

TEST_CASE("a Generate request and its final update round-trip", "[proto]") {
  v1::GenerateRequest req;
  req.set_request_id("cmpl-123");
  req.set_model("smollm2");
  for (int t : {1, 9690, 28, 2}) req.add_prompt_token_ids(t);
  *req.mutable_sampling() = full_sampling_params();
  req.set_priority(-1);
  req.set_deadline_unix_us(1795682401123456);
  CHECK(MessageDifferencer::Equals(req, round_trip(req)));

  v1::GenerateResponse resp;
  resp.set_request_id("cmpl-123");
  resp.add_token_ids(42);
  auto* lp = resp.add_logprobs();
  lp->mutable_chosen()->set_token_id(42);
  lp->mutable_chosen()->set_logprob(-0.125f);
  lp->mutable_chosen()->set_rank(1);
  auto* alt = lp->add_top();
  alt->set_token_id(43);
  alt->set_logprob(-2.5f);
  alt->set_rank(2);
  resp.mutable_finished()->set_reason(v1::FINISH_REASON_LENGTH);
  resp.mutable_finished()->set_time_to_first_token_us(15000);
  resp.mutable_usage()->set_prompt_tokens(4);
  resp.mutable_usage()->set_completion_tokens(1);
  resp.mutable_usage()->set_cached_prompt_tokens(0);
  v1::GenerateResponse back = round_trip(resp);
  CHECK(MessageDifferencer::Equals(resp, back));
  CHECK(back.has_finished());
  CHECK(back.finished().reason() == v1::FINISH_REASON_LENGTH);
}

TEST_CASE("an Attach stream's messages round-trip as their oneof kind", "[proto]") {
  v1::WorkerMessage hello;
  auto* d = hello.mutable_describe();
  d->set_protocol_version(1);
  d->set_worker_id("host-1/pid-77");
  d->mutable_model()->set_name("smollm2");
  d->mutable_model()->set_context_length_tokens(8192);
  d->mutable_model()->add_eos_token_ids(2);
  d->set_group("g0");
  d->set_rank(1);
  d->set_world_size(2);
  d->set_tensor_parallel_size(2);
  d->set_pipeline_parallel_size(1);
  d->set_num_kv_pages(12345);
  d->set_page_size_tokens(16);
  d->set_collective_id(std::string("\x00\x01\xff", 3));
  v1::WorkerMessage hello_back = round_trip(hello);
  CHECK(hello_back.kind_case() == v1::WorkerMessage::kDescribe);
  CHECK(MessageDifferencer::Equals(hello, hello_back));
  CHECK(hello_back.describe().collective_id().size() == 3);

  v1::RouterMessage plan_msg;
  auto* plan = plan_msg.mutable_plan();
  plan->set_step_id(7);
  auto* ns = plan->add_new_sequences();
  ns->set_seq_id(100);
  ns->set_seed(99);
  for (int t : {1, 2, 3, 4, 5}) ns->add_token_ids(t);
  ns->set_num_prompt_tokens(5);
  ns->add_cached_pages(3);
  ns->set_num_cached_tokens(16);
  auto* s = plan->add_scheduled();
  s->set_seq_id(100);
  s->set_start_position(16);
  s->set_num_tokens(5);
  s->add_new_pages(4);
  s->set_sample(true);
  plan->add_released_seq_ids(55);
  auto* copy = plan->add_page_copies();
  copy->set_src_page(3);
  copy->set_dst_page(9);
  v1::RouterMessage plan_back = round_trip(plan_msg);
  CHECK(plan_back.kind_case() == v1::RouterMessage::kPlan);
  CHECK(MessageDifferencer::Equals(plan_msg, plan_back));

  v1::WorkerMessage result;
  result.mutable_result()->set_step_id(7);
  auto* tok = result.mutable_result()->add_sampled();
  tok->set_seq_id(100);
  tok->set_token_id(31);
  result.mutable_result()->set_forward_us(1234);
  CHECK(MessageDifferencer::Equals(result, round_trip(result)));

  v1::WorkerMessage fault;
  fault.mutable_fault()->set_code("RESOURCE_EXHAUSTED");
  fault.mutable_fault()->add_failed_seq_ids(100);
  fault.mutable_fault()->set_fatal(true);
  CHECK(round_trip(fault).fault().fatal());
}

TEST_CASE("enums open with an UNSPECIFIED zero value, so a missing reason is detectable", "[proto]") {
  v1::FinishInfo empty;
  CHECK(empty.reason() == v1::FINISH_REASON_UNSPECIFIED);
  CHECK(v1::FinishReason_Name(v1::FINISH_REASON_EOS) == "FINISH_REASON_EOS");
}

TEST_CASE("router stats round-trip with per-group entries", "[proto]") {
  v1::RouterStats st;
  st.set_ready(true);
  st.set_num_running(3);
  st.set_num_waiting(1);
  st.set_kv_cache_usage_ratio(0.25f);
  auto* g = st.add_groups();
  g->set_group_id(0);
  g->set_num_attached_ranks(2);
  g->set_num_ranks(2);
  g->set_num_kv_pages(1000);
  g->set_num_kv_pages_used(250);
  CHECK(MessageDifferencer::Equals(st, round_trip(st)));
}

TEST_CASE("the gRPC services expose the methods the design names", "[proto]") {
  const auto* router = v1::Router::service_full_name();
  CHECK(std::string(router) == "tessera.v1.Router");
  const auto* desc = v1::GenerateRequest::descriptor()->file()->FindServiceByName("Router");
  REQUIRE(desc != nullptr);
  CHECK(desc->FindMethodByName("Generate")->server_streaming());
  CHECK_FALSE(desc->FindMethodByName("Generate")->client_streaming());
  CHECK(desc->FindMethodByName("Abort") != nullptr);
  CHECK(desc->FindMethodByName("GetStats") != nullptr);
  const auto* hub = v1::WorkerMessage::descriptor()->file()->FindServiceByName("WorkerHub");
  REQUIRE(hub != nullptr);
  CHECK(hub->FindMethodByName("Attach")->client_streaming());
  CHECK(hub->FindMethodByName("Attach")->server_streaming());
}
