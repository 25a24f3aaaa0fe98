// The CPU engine against Hugging Face transformers (float32, the GGUF dequantized):
// last-position logits of 20 prompts within 1e-3 max relative error, and 64-token greedy
// continuations equal to the reference (a divergence is accepted only right after a
// near-tie, top-2 gap < 1e-3, and reported).

#include "engine_fixtures.h"
#include "worker/engine/offline_runner.h"

using namespace tessera;
using namespace tessera::engine;

namespace {

std::unique_ptr<Engine> load(models::WeightMode mode) {
  EngineOptions o;
  o.weight_mode = mode;
  // The reference path keeps the KV cache in float32 too; the native path uses the default.
  if (mode == models::WeightMode::kDequantizeF32) o.kv_dtype = KvDtype::kF32;
  o.max_batch_tokens = 512;
  o.max_sequences = 20;
  o.kv_cache_tokens = 20 * 512;
  return testing::load_test_model(o);
}

}  // namespace

TEST_CASE("engine (dequantized float32) matches the transformers reference", "[engine][reference]") {
  const auto prompts = testing::load_reference_prompts();
  REQUIRE(prompts.size() == 20);
  auto engine = load(models::WeightMode::kDequantizeF32);
  OfflineRunner runner(*engine, {.keep_first_logits = true});
  const auto reqs = testing::greedy_requests(prompts, 64);
  auto results = runner.run(reqs);
  REQUIRE(results.is_ok());
  double worst = 0;
  int divergences = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    const auto& p = prompts[i];
    const auto& r = (*results)[i];
    INFO("prompt " << p.name << " (" << p.token_ids.size() << " tokens)");
    REQUIRE(r.error.is_ok());
    const double err = testing::max_relative_error(r.first_logits, p.last_logits);
    worst = std::max(worst, err);
    CHECK(err < 1e-3);
    REQUIRE(r.tokens.size() == 64);
    for (size_t t = 0; t < 64; ++t) {
      if (r.tokens[t] == p.greedy_token_ids[t]) continue;
      // Tokens after t follow from a different history; only the near-tie excuses it.
      INFO("greedy step " << t << ": ours " << r.tokens[t] << ", reference " << p.greedy_token_ids[t]
                          << ", reference top-2 gap " << p.greedy_top2_gap[t]);
      REQUIRE(p.greedy_top2_gap[t] < 1e-3f);
      WARN("prompt " << p.name << " diverges at greedy step " << t << " after a near-tie (gap "
                     << p.greedy_top2_gap[t] << ")");
      ++divergences;
      break;
    }
  }
  WARN("dequantized path: worst max relative logits error " << worst << " over 20 prompts; " << divergences
                                                            << " greedy divergences after near-ties");
}

TEST_CASE("engine (native quantized path) stays close to the reference", "[engine][reference]") {
  // Weights stay Q4_1/Q8_0 and activations are quantized to int8 per 32 (as llama.cpp
  // does), so logits move by a few percent; this bounds how far, and counts how many
  // first tokens still agree with the float32 reference.
  const auto prompts = testing::load_reference_prompts();
  auto engine = load(models::WeightMode::kNative);
  OfflineRunner runner(*engine, {.keep_first_logits = true});
  auto results = runner.run(testing::greedy_requests(prompts, 1));
  REQUIRE(results.is_ok());
  double worst = 0;
  int same_first = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    const double err = testing::max_relative_error((*results)[i].first_logits, prompts[i].last_logits);
    worst = std::max(worst, err);
    same_first += (*results)[i].tokens[0] == prompts[i].greedy_token_ids[0] ? 1 : 0;
  }
  WARN("native path: worst max relative logits error " << worst << "; first greedy token equal to the reference for "
                                                       << same_first << "/20 prompts");
  CHECK(worst < 0.15);
  CHECK(same_first >= 15);
}
