#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <string>

#include "test_data.h"
#include "worker/loader/gguf_file.h"
#include "worker/models/model_config.h"

using Catch::Matchers::Contains;
using tessera::StatusCode;
namespace models = tessera::models;

namespace {

std::string fixture(const std::string& name) { return std::string(TESSERA_FIXTURES_DIR) + "/models/" + name; }

models::ModelConfig load(const std::string& name) {
  auto r = models::load_hf_config(fixture(name));
  INFO(r.status().to_string());
  REQUIRE(r.is_ok());
  return *r;
}

std::string error_of(const std::string& json) {
  auto r = models::parse_hf_config(json, "config.json");
  REQUIRE_FALSE(r.is_ok());
  return r.status().message();
}

}  // namespace

TEST_CASE("Llama 3.1 8B: GQA, llama3 rope scaling and the generation config's EOS ids", "[models]") {
  auto c = load("llama-3.1-8b-instruct");
  CHECK(c.family == models::ModelFamily::kLlama);
  CHECK(c.architecture == "LlamaForCausalLM");
  CHECK(c.num_layers == 32);
  CHECK(c.num_attention_heads == 32);
  CHECK(c.num_kv_heads == 8);
  CHECK(c.head_dim == 128);
  CHECK(c.max_position_embeddings == 131072);
  CHECK(c.rope_theta == 500000.0);
  CHECK(c.rope_scaling.type == models::RopeScalingType::kLlama3);
  CHECK(c.rope_scaling.factor == 8.0);
  CHECK(c.rope_scaling.high_freq_factor == 4.0);
  CHECK(c.rope_scaling.original_max_position_embeddings == 8192);
  CHECK(c.bos_token_id == 128000);
  CHECK(c.eos_token_ids == std::vector<int32_t>{128001, 128008, 128009});
  CHECK_FALSE(c.tie_word_embeddings);
  CHECK_FALSE(c.attention_bias);
  CHECK(c.num_parameters() == 8030261248ull);  // the published checkpoint's count
}

TEST_CASE("Qwen2.5 7B: q/k/v biases and no sliding window when use_sliding_window is false", "[models]") {
  auto c = load("qwen2.5-7b-instruct");
  CHECK(c.family == models::ModelFamily::kQwen2);
  CHECK(c.attention_bias);
  CHECK(c.sliding_window == 0);
  CHECK(c.rms_norm_eps == 1e-6);
  CHECK(c.eos_token_ids == std::vector<int32_t>{151645});
  CHECK(c.num_parameters() == 7615616512ull);
}

TEST_CASE("SmolLM2 135M: tied embeddings count the embedding matrix once", "[models]") {
  auto c = load("smollm2-135m-instruct");
  CHECK(c.tie_word_embeddings);
  CHECK(c.head_dim == 64);
  CHECK(c.pad_token_id == 2);
  CHECK(c.rope_scaling.type == models::RopeScalingType::kNone);
  CHECK(c.num_parameters() == 134515008ull);
}

TEST_CASE("Mistral 7B v0.3, Llama 3.2 1B and Llama 2 7B parse with their published sizes", "[models]") {
  auto mistral = load("mistral-7b-instruct-v0.3");
  CHECK(mistral.family == models::ModelFamily::kMistral);
  CHECK(mistral.sliding_window == 0);  // "sliding_window": null
  CHECK(mistral.num_parameters() == 7248023552ull);
  auto llama32 = load("llama-3.2-1b");
  CHECK(llama32.tie_word_embeddings);
  CHECK(llama32.rope_scaling.factor == 32.0);
  CHECK(llama32.num_parameters() == 1235814400ull);
  auto llama2 = load("llama-2-7b");
  CHECK(llama2.num_kv_heads == 32);
  CHECK(llama2.rope_theta == 10000.0);  // the default when the key is absent
  CHECK(llama2.num_parameters() == 6738415616ull);
}

TEST_CASE("MiniCPM: the scale factors are derived from scale_emb, scale_depth and dim_model_base", "[models]") {
  auto c = load("minicpm-2b");
  CHECK(c.family == models::ModelFamily::kMiniCpm);
  CHECK(c.embedding_scale == 12.0);
  CHECK(c.residual_scale == Approx(1.4 / std::sqrt(40.0)));
  CHECK(c.logit_scale == Approx(256.0 / 2304.0));
}

TEST_CASE("an unsupported architecture is named in the error with the supported list", "[models]") {
  auto r = models::parse_hf_config(R"({"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox"})", "config.json");
  REQUIRE_FALSE(r.is_ok());
  CHECK(r.status().code() == StatusCode::kUnimplemented);
  CHECK(r.status().message() ==
        "config.json: unsupported architecture 'GPTNeoXForCausalLM' (model_type 'gpt_neox'); supported model types: "
        "llama, mistral, qwen2, minicpm");
}

TEST_CASE("missing, mistyped and inconsistent fields are errors naming the key", "[models]") {
  CHECK(error_of(R"({"model_type": "llama", "vocab_size": 10})") == "config.json: missing required key 'hidden_size'");
  CHECK(error_of(R"({"model_type": "llama", "vocab_size": "big"})") ==
        "config.json: 'vocab_size' must be a non-negative integer (got \"big\")");
  const std::string base =
      R"("model_type": "llama", "vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
         "num_hidden_layers": 2, "max_position_embeddings": 256)";
  CHECK_THAT(error_of("{" + base + R"(, "num_attention_heads": 8, "num_key_value_heads": 3})"),
             Contains("num_attention_heads (8) must be a multiple of num_kv_heads (3)"));
  CHECK_THAT(error_of("{" + base + R"(, "num_attention_heads": 8, "rope_scaling": {"rope_type": "yarn", "factor": 4}})"),
             Contains("rope_scaling type 'yarn' is not supported (supported: default, linear, llama3)"));
  CHECK_THAT(error_of("{" + base + R"(, "num_attention_heads": 8, "eos_token_id": 100})"),
             Contains("eos token id 100 is outside the vocabulary"));
  CHECK_THAT(error_of("{not json"), Contains("config.json: not valid JSON"));
}

TEST_CASE("a missing config file is NOT_FOUND with its path", "[models]") {
  auto r = models::load_hf_config("/nonexistent/model");
  REQUIRE_FALSE(r.is_ok());
  CHECK(r.status().code() == StatusCode::kNotFound);
  CHECK(r.status().message() == "/nonexistent/model: no such file or directory");
}

TEST_CASE("weight specs list every tensor in both naming conventions, biases only where the family has them",
          "[models]") {
  auto smol = load("smollm2-135m-instruct");
  auto specs = models::weight_specs(smol);
  CHECK(specs.size() == 1 + 30 * 9 + 1);  // no lm_head: tied; the test model's GGUF has 272 tensors
  CHECK(specs.front().gguf_name == "token_embd.weight");
  CHECK(specs.front().shape == std::vector<int64_t>{49152, 576});
  CHECK(specs[2].hf_name == "model.layers.0.self_attn.q_proj.weight");
  CHECK(specs[2].gguf_name == "blk.0.attn_q.weight");
  CHECK(specs[3].shape == std::vector<int64_t>{192, 576});  // k_proj: 3 kv heads × 64
  auto qwen = models::weight_specs(load("qwen2.5-7b-instruct"));
  CHECK(std::count_if(qwen.begin(), qwen.end(), [](const auto& s) { return s.is_bias; }) == 28 * 3);
  CHECK(qwen.back().hf_name == "lm_head.weight");
}

TEST_CASE("a missing tensor is reported by name, with the count", "[models]") {
  auto c = load("smollm2-135m-instruct");
  std::vector<std::string> names;
  for (const auto& s : models::weight_specs(c)) names.push_back(s.gguf_name);
  CHECK(models::check_weights_present(c, models::NameStyle::kGguf, names).is_ok());
  names.erase(std::find(names.begin(), names.end(), "blk.7.ffn_up.weight"));
  auto s = models::check_weights_present(c, models::NameStyle::kGguf, names);
  CHECK(s.code() == StatusCode::kNotFound);
  CHECK(s.message() == "1 required tensor(s) missing: blk.7.ffn_up.weight");
  CHECK_THAT(models::check_weights_present(c, models::NameStyle::kHuggingFace, names).message(),
             Contains("272 required tensor(s) missing: model.embed_tokens.weight"));
}

TEST_CASE("the test model's GGUF metadata gives SmolLM2's config, matching its config.json", "[models][gguf]") {
  auto file = tessera::loader::GgufFile::open(tessera::testing::test_model_path());
  INFO(file.status().to_string() << " (run scripts/fetch-model)");
  REQUIRE(file.is_ok());
  auto g = models::config_from_gguf(*file);
  INFO(g.status().to_string());
  REQUIRE(g.is_ok());
  auto hf = load("smollm2-135m-instruct");
  CHECK(g->architecture == "llama");
  CHECK(g->vocab_size == hf.vocab_size);
  CHECK(g->hidden_size == hf.hidden_size);
  CHECK(g->intermediate_size == hf.intermediate_size);
  CHECK(g->num_layers == hf.num_layers);
  CHECK(g->num_attention_heads == hf.num_attention_heads);
  CHECK(g->num_kv_heads == hf.num_kv_heads);
  CHECK(g->head_dim == hf.head_dim);
  CHECK(g->max_position_embeddings == hf.max_position_embeddings);
  CHECK(g->rope_theta == hf.rope_theta);
  CHECK(g->rms_norm_eps == Approx(hf.rms_norm_eps));
  CHECK(g->tie_word_embeddings);
  CHECK_FALSE(g->attention_bias);
  CHECK(g->bos_token_id == 1);
  CHECK(g->eos_token_ids == std::vector<int32_t>{2});
  CHECK(g->weight_dtype == "q4_1");
  CHECK(g->num_parameters() == hf.num_parameters());
}
