// The llama family's variants against transformers (tests/fixtures/engine/families, made by
// scripts/fixtures/make_family_fixtures.py): Llama 3 rope scaling, Qwen2 q/k/v bias with tied
// embeddings, Mistral's sliding window — last-position logits within 1e-4 max relative
// error and 8 greedy tokens equal on the float32 path; the native path (same float32
// weights, half-precision KV cache) within 5e-3.
#include <filesystem>
#include <fstream>

#include "engine_fixtures.h"
#include "worker/engine/offline_runner.h"

using namespace tessera;
using namespace tessera::engine;

namespace {

struct FamilyPrompt {
  std::vector<int32_t> ids;
  std::vector<float> logits;
  std::vector<int32_t> greedy;
};

std::vector<FamilyPrompt> load_family_reference(const std::string& dir) {
  std::ifstream f(dir + "/reference.json");
  REQUIRE(f.good());
  const auto j = nlohmann::json::parse(f);
  std::vector<FamilyPrompt> out;
  for (const auto& p : j.at("prompts")) {
    out.push_back({p.at("token_ids").get<std::vector<int32_t>>(), p.at("last_logits").get<std::vector<float>>(),
                   p.at("greedy_token_ids").get<std::vector<int32_t>>()});
  }
  return out;
}

void check_family(const std::string& name, models::WeightMode mode, double max_error) {
  const std::string dir = testing::family_dir(name);
  const auto prompts = load_family_reference(dir);
  EngineOptions o;
  o.weight_mode = mode;
  o.kv_dtype = mode == models::WeightMode::kDequantizeF32 ? KvDtype::kF32 : KvDtype::kF16;
  o.page_size = 4;  // several pages even for these short prompts
  o.kv_cache_tokens = 1024;
  auto engine = testing::load_family(name, o);
  std::vector<GenerationRequest> reqs;
  for (const auto& p : prompts) {
    GenerationRequest r;
    r.prompt = p.ids;
    r.sampling.temperature = 0;
    r.max_tokens = 8;
    r.ignore_eos = true;
    reqs.push_back(r);
  }
  OfflineRunner runner(*engine, {.keep_first_logits = true});
  auto results = runner.run(reqs);
  REQUIRE(results.is_ok());
  for (size_t i = 0; i < prompts.size(); ++i) {
    INFO(name << " prompt of " << prompts[i].ids.size() << " tokens");
    const auto& r = (*results)[i];
    REQUIRE(r.error.is_ok());
    CHECK(testing::max_relative_error(r.first_logits, prompts[i].logits) < max_error);
    if (mode == models::WeightMode::kDequantizeF32) CHECK(r.tokens == prompts[i].greedy);
  }
}

}  // namespace

TEST_CASE("llama 3 rope scaling matches transformers", "[engine][families]") {
  check_family("llama3", models::WeightMode::kDequantizeF32, 1e-4);
  check_family("llama3", models::WeightMode::kNative, 5e-3);
}

TEST_CASE("qwen2 q/k/v bias and tied embeddings match transformers", "[engine][families]") {
  check_family("qwen2", models::WeightMode::kDequantizeF32, 1e-4);
  check_family("qwen2", models::WeightMode::kNative, 5e-3);
}

TEST_CASE("mistral's sliding window matches transformers", "[engine][families]") {
  check_family("mistral", models::WeightMode::kDequantizeF32, 1e-4);
  check_family("mistral", models::WeightMode::kNative, 5e-3);
}
