// The engine's reference fixtures (tests/fixtures/engine, made by
// scripts/fixtures/make_engine_fixtures.py from Hugging Face transformers in float32).
#pragma once

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "test_data.h"
#include "worker/engine/engine.h"
#include "worker/engine/offline_runner.h"

namespace tessera::testing {

struct ReferencePrompt {
  std::string name;
  std::vector<int32_t> token_ids;
  std::vector<int32_t> greedy_token_ids;
  std::vector<float> greedy_top2_gap;
  std::vector<float> last_logits;
};

// The test model's path; fails the test (saying how to fetch it) when it is missing.
inline std::string require_test_model() {
  const std::string model = test_model_path();
  if (!std::filesystem::exists(model)) FAIL("test model missing: run scripts/fetch-model (" << model << ")");
  return model;
}

// The test model loaded on the engine with these options.
inline std::unique_ptr<engine::Engine> load_test_model(const engine::EngineOptions& options) {
  auto e = engine::Engine::load_gguf(require_test_model(), options);
  INFO(e.status().message());
  REQUIRE(e.is_ok());
  return std::move(*e);
}

// A tiny transformers checkpoint of tests/fixtures/engine/families (llama3, qwen2, mistral).
inline std::string family_dir(const std::string& name) {
  return fixtures_dir(TESSERA_FIXTURES_DIR) + "/engine/families/" + name;
}

inline std::unique_ptr<engine::Engine> load_family(const std::string& name, const engine::EngineOptions& options) {
  auto e = engine::Engine::load({family_dir(name), engine::LoadFormat::kSafetensors, 0}, options);
  INFO(name << ": " << e.status().message());
  REQUIRE(e.is_ok());
  return std::move(*e);
}

inline std::vector<ReferencePrompt> load_reference_prompts() {
  const std::string dir = fixtures_dir(TESSERA_FIXTURES_DIR) + "/engine/";
  std::ifstream jf(dir + "smollm2_q4_1_reference.json");
  REQUIRE(jf.good());
  const nlohmann::json j = nlohmann::json::parse(jf);
  const size_t vocab = j.at("vocab_size").get<size_t>();
  std::ifstream lf(dir + j.at("logits_file").get<std::string>(), std::ios::binary);
  REQUIRE(lf.good());
  std::vector<ReferencePrompt> out;
  for (const auto& p : j.at("prompts")) {
    ReferencePrompt r;
    r.name = p.at("name").get<std::string>();
    r.token_ids = p.at("token_ids").get<std::vector<int32_t>>();
    r.greedy_token_ids = p.at("greedy_token_ids").get<std::vector<int32_t>>();
    r.greedy_top2_gap = p.at("greedy_top2_gap").get<std::vector<float>>();
    r.last_logits.resize(vocab);
    lf.read(reinterpret_cast<char*>(r.last_logits.data()), static_cast<std::streamsize>(vocab * sizeof(float)));
    REQUIRE(lf.good());
    out.push_back(std::move(r));
  }
  return out;
}

// Greedy requests for the fixture prompts: n tokens each, past EOS.
inline std::vector<engine::GenerationRequest> greedy_requests(const std::vector<ReferencePrompt>& prompts, uint32_t n) {
  std::vector<engine::GenerationRequest> reqs;
  for (const auto& p : prompts) {
    engine::GenerationRequest r;
    r.prompt = p.token_ids;
    r.sampling.temperature = 0;
    r.max_tokens = n;
    r.ignore_eos = true;
    reqs.push_back(r);
  }
  return reqs;
}

// max_i |ours_i - ref_i| / max_i |ref_i| (tests/fixtures/engine/README.md).
inline double max_relative_error(const std::vector<float>& ours, const std::vector<float>& ref) {
  double diff = 0, scale = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    diff = std::max(diff, std::fabs(static_cast<double>(ours[i]) - ref[i]));
    scale = std::max(scale, std::fabs(static_cast<double>(ref[i])));
  }
  return diff / scale;
}

// ||ours - ref||₂ / ||ref||₂: the error relative to the logits vector as a whole (the
// max-norm one above is set by the single worst logit).
inline double l2_relative_error(const std::vector<float>& ours, const std::vector<float>& ref) {
  double diff = 0, scale = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double d = static_cast<double>(ours[i]) - ref[i];
    diff += d * d;
    scale += static_cast<double>(ref[i]) * ref[i];
  }
  return std::sqrt(diff / scale);
}

inline float top2_gap(const std::vector<float>& logits) {
  float a = -INFINITY, b = -INFINITY;
  for (float v : logits) {
    if (v > a) {
      b = a;
      a = v;
    } else if (v > b) {
      b = v;
    }
  }
  return a - b;
}

}  // namespace tessera::testing
