// The engine on the CUDA backend against the CPU engine and the transformers reference
// (tests/fixtures/engine). bf16 costs precision: transformers itself, run in bf16, lands
// up to 5% (max relative error) from its float32 logits on these prompts
// (smollm2_q4_1_hf_bf16.json, scripts/fixtures/make_bf16_reference.py), so the CUDA
// backend is held to that: its worst and mean error over the 20 fixture prompts no larger
// than bf16 transformers', against the float32 reference and against the CPU engine; its
// greedy continuations equal to the reference's up to a near-tie no wider than those
// bf16 transformers diverges at. Also: CUDA graph steps give the same tokens as eager
// ones, captured on first use or at start-up; seeded sampling is reproducible, and a missing device is refused.
#include <algorithm>
#include <cmath>
#include <fstream>
#include <numeric>

#include "cuda_test_main.h"
#include "engine/engine_fixtures.h"
#include "worker/engine/offline_runner.h"

using namespace tessera;
using namespace tessera::engine;

namespace {

EngineOptions cuda_options(bool graphs) {
  EngineOptions o;
  o.device = EngineDevice::kCuda;
  o.cuda_graphs = graphs;
  o.max_batch_tokens = 1024;
  o.max_sequences = 32;
  o.kv_cache_bytes = int64_t{256} << 20;
  return o;
}


// What bf16 transformers achieves against its float32 self (the fixture's `bf16` variant).
struct Bf16Reference {
  double worst = 0, mean = 0;
  float widest_divergence_gap = 0;  // the largest float32 top-2 gap bf16 greedy diverged at
};

Bf16Reference load_bf16_reference() {
  std::ifstream f(testing::fixtures_dir(TESSERA_FIXTURES_DIR) + "/engine/smollm2_q4_1_hf_bf16.json");
  REQUIRE(f.good());
  const nlohmann::json j = nlohmann::json::parse(f);
  Bf16Reference r;
  r.worst = j.at("summary").at("bf16").at("worst").get<double>();
  r.mean = j.at("summary").at("bf16").at("mean").get<double>();
  for (const auto& row : j.at("variants").at("bf16")) {
    if (!row.at("reference_gap_there").is_null()) {
      r.widest_divergence_gap = std::max(r.widest_divergence_gap, row.at("reference_gap_there").get<float>());
    }
  }
  REQUIRE(r.worst > 0);
  return r;
}

// The first `count` prompts, 24 greedy tokens each, give the same tokens on both engines.
void check_same_tokens(Engine& eager, Engine& graphs, const std::vector<testing::ReferencePrompt>& prompts,
                       size_t count) {
  const std::vector<testing::ReferencePrompt> some(prompts.begin(), prompts.begin() + static_cast<long>(count));
  const auto reqs = testing::greedy_requests(some, 24);
  OfflineRunner a(eager, {}), b(graphs, {});
  auto ra = a.run(reqs);
  auto rb = b.run(reqs);
  REQUIRE(ra.is_ok());
  REQUIRE(rb.is_ok());
  for (size_t i = 0; i < count; ++i) {
    INFO(count << " sequences, prompt " << i);
    REQUIRE((*rb)[i].error.is_ok());
    CHECK((*ra)[i].tokens == (*rb)[i].tokens);
  }
}

}  // namespace

TEST_CASE("CUDA engine logits and greedy continuations match the references", "[cuda][engine]") {
  const auto prompts = testing::load_reference_prompts();
  REQUIRE(prompts.size() == 20);
  auto gpu = testing::load_test_model(cuda_options(true));
  INFO("backend " << gpu->backend_name());
  CHECK(gpu->backend_name().find("cuda") == 0);

  EngineOptions cpu_options;
  cpu_options.weight_mode = models::WeightMode::kDequantizeF32;
  cpu_options.kv_dtype = KvDtype::kF32;
  cpu_options.max_sequences = 20;
  cpu_options.kv_cache_tokens = 20 * 512;
  auto cpu = testing::load_test_model(cpu_options);

  const auto reqs = testing::greedy_requests(prompts, 32);
  // With logits kept, every step downloads them; without, greedy rows are picked on the
  // device and decode steps replay CUDA graphs.
  OfflineRunner gpu_logits_runner(*gpu, {.keep_first_logits = true});
  auto with_logits = gpu_logits_runner.run(reqs);
  REQUIRE(with_logits.is_ok());
  OfflineRunner cpu_runner(*cpu, {.keep_first_logits = true});
  auto cpu_results = cpu_runner.run(reqs);
  REQUIRE(cpu_results.is_ok());
  OfflineRunner gpu_runner(*gpu, {});
  auto fast = gpu_runner.run(reqs);
  REQUIRE(fast.is_ok());

  const Bf16Reference bf16_ref = load_bf16_reference();
  // Near-ties: gaps up to 1.5 × the widest one bf16 transformers diverged at.
  const float near_tie = 1.5f * bf16_ref.widest_divergence_gap;
  std::vector<double> vs_cpu_errors, vs_hf_errors, vs_cpu_l2, vs_hf_l2;
  int divergences = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    const auto& p = prompts[i];
    const auto& g = (*with_logits)[i];
    INFO("prompt " << p.name << " (" << p.token_ids.size() << " tokens)");
    REQUIRE(g.error.is_ok());
    REQUIRE((*fast)[i].error.is_ok());
    vs_cpu_errors.push_back(testing::max_relative_error(g.first_logits, (*cpu_results)[i].first_logits));
    vs_hf_errors.push_back(testing::max_relative_error(g.first_logits, p.last_logits));
    vs_cpu_l2.push_back(testing::l2_relative_error(g.first_logits, (*cpu_results)[i].first_logits));
    vs_hf_l2.push_back(testing::l2_relative_error(g.first_logits, p.last_logits));
    // Downloaded-logits greedy and device-argmax greedy (with graphs) pick the same tokens.
    CHECK(g.tokens == (*fast)[i].tokens);
    for (size_t t = 0; t < 32; ++t) {
      if ((*fast)[i].tokens[t] == p.greedy_token_ids[t]) continue;
      INFO("greedy step " << t << ": ours " << (*fast)[i].tokens[t] << ", reference " << p.greedy_token_ids[t]
                          << ", reference top-2 gap " << p.greedy_top2_gap[t]);
      REQUIRE(p.greedy_top2_gap[t] < near_tie);
      WARN("prompt " << p.name << " diverges at greedy step " << t << " after a near-tie (gap "
                     << p.greedy_top2_gap[t] << ")");
      ++divergences;
      break;
    }
  }
  auto worst = [](const std::vector<double>& v) { return *std::max_element(v.begin(), v.end()); };
  auto mean = [](const std::vector<double>& v) { return std::accumulate(v.begin(), v.end(), 0.0) / v.size(); };
  INFO("bf16 transformers against float32: worst " << bf16_ref.worst << ", mean " << bf16_ref.mean);
  CHECK(worst(vs_hf_errors) <= bf16_ref.worst);
  CHECK(mean(vs_hf_errors) <= bf16_ref.mean);
  CHECK(worst(vs_cpu_errors) <= bf16_ref.worst);
  CHECK(mean(vs_cpu_errors) <= bf16_ref.mean);
  WARN("CUDA bf16 max relative logits error over 20 prompts: worst " << worst(vs_hf_errors) << ", mean "
       << mean(vs_hf_errors) << " vs transformers float32 (bf16 transformers: worst " << bf16_ref.worst << ", mean "
       << bf16_ref.mean << "); worst " << worst(vs_cpu_errors) << ", mean " << mean(vs_cpu_errors)
       << " vs the CPU engine; " << divergences << " of 20 greedy continuations diverge, each after a near-tie");
  WARN("CUDA bf16 L2 relative logits error over 20 prompts: worst " << worst(vs_hf_l2) << ", mean " << mean(vs_hf_l2)
       << " vs transformers float32; worst " << worst(vs_cpu_l2) << ", mean " << mean(vs_cpu_l2) << " vs the CPU engine");
}

TEST_CASE("CUDA graph steps produce the same tokens as eager steps", "[cuda][engine][graphs]") {
  const auto prompts = testing::load_reference_prompts();
  auto eager = testing::load_test_model(cuda_options(false));
  auto graphs = testing::load_test_model(cuda_options(true));
  // Batches of 1, 5 and 20 sequences: padded to graph buckets 1, 8 and 24.
  for (size_t count : {size_t{1}, size_t{5}, size_t{20}}) check_same_tokens(*eager, *graphs, prompts, count);
}

TEST_CASE("CUDA graphs captured at start-up serve steps as eager steps do", "[cuda][engine][graphs]") {
  const auto prompts = testing::load_reference_prompts();
  auto eager = testing::load_test_model(cuda_options(false));
  auto graphs = testing::load_test_model(cuda_options(true));
  CHECK(eager->capture_graphs(1024).value() == 0);  // graphs off: nothing to capture
  // Batch buckets 1, 2, 4, 8, 16, 24, 32 (max_sequences) × contexts 256, 512, 1024.
  REQUIRE(graphs->capture_graphs(1024).value() == 21);
  CHECK(graphs->capture_graphs(1024).value() == 0);  // kept
  CHECK(graphs->capture_graphs(2048).value() == 7);  // one more context bucket
  check_same_tokens(*eager, *graphs, prompts, 20);
  CHECK(graphs->capture_graphs(2048).value() == 0);  // the steps found every graph they needed
}

TEST_CASE("CUDA engine sampling is seeded and reproducible", "[cuda][engine]") {
  // Sampled on the device (top-p; top-k with penalties; min-p with a logit bias), and one
  // request with logprobs, which samples on the host from downloaded logits.
  const auto prompts = testing::load_reference_prompts();
  auto gpu = testing::load_test_model(cuda_options(true));
  std::vector<GenerationRequest> reqs;
  for (size_t i = 0; i < 4; ++i) {
    GenerationRequest r;
    r.prompt = prompts[i].token_ids;
    r.sampling.temperature = 0.8f;
    r.sampling.top_p = 0.9f;
    r.sampling.seed = 1234 + i;
    r.max_tokens = 16;
    r.ignore_eos = true;
    if (i == 1) {
      r.sampling.top_k = 40;
      r.sampling.repetition_penalty = 1.2f;
      r.sampling.frequency_penalty = 0.5f;
    }
    if (i == 2) {
      r.sampling.min_p = 0.05f;
      r.sampling.logit_bias = {{prompts[i].token_ids.back(), 3.0f}};
    }
    if (i == 3) {
      r.sampling.logprobs = true;
      r.sampling.num_top_logprobs = 2;
    }
    reqs.push_back(r);
  }
  OfflineRunner a(*gpu, {}), b(*gpu, {});
  auto ra = a.run(reqs);
  auto rb = b.run(reqs);
  REQUIRE(ra.is_ok());
  REQUIRE(rb.is_ok());
  for (size_t i = 0; i < reqs.size(); ++i) {
    REQUIRE((*ra)[i].error.is_ok());
    REQUIRE((*ra)[i].tokens.size() == 16);
    CHECK((*ra)[i].tokens == (*rb)[i].tokens);
  }
  REQUIRE((*ra)[3].samples.size() == 16);
  CHECK((*ra)[3].samples[0].has_logprobs);
  CHECK((*ra)[3].samples[0].top.size() == 2);
}

TEST_CASE("CUDA engine refuses a device that does not exist", "[cuda][engine]") {
  EngineOptions o = cuda_options(true);
  o.device_index = 4096;
  auto e = Engine::load_gguf(testing::require_test_model(), o);
  REQUIRE_FALSE(e.is_ok());
  CHECK(e.status().code() == StatusCode::kInvalidArgument);
}
