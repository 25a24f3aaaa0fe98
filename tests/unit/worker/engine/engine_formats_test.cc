// The engine loads the same model from a GGUF file and from a Hugging Face safetensors
// directory (Hugging Face names, un-permuted q/k rows, rotate-half RoPE) with the same
// logits; and the dummy load format gives a deterministic, runnable model of any config.
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <unistd.h>

#include "engine_fixtures.h"
#include "loader/safetensors_writer.h"
#include "worker/engine/offline_runner.h"
#include "worker/loader/gguf_file.h"
#include "worker/models/model_config.h"

using namespace tessera;
using namespace tessera::engine;
namespace fs = std::filesystem;

namespace {

struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() / ("tessera-engine-formats-" + std::to_string(::getpid()));
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

// llama.cpp's converter stores q/k rows of each head as (i, half) pairs; Hugging Face as
// (half, i). Row h*hd + half*hd/2 + i of the HF matrix is row h*hd + 2*i + half in GGUF.
std::vector<float> unpermute_rows(const std::vector<float>& gguf, int64_t num_heads, int64_t head_dim, int64_t cols) {
  std::vector<float> hf(gguf.size());
  for (int64_t h = 0; h < num_heads; ++h) {
    for (int64_t half = 0; half < 2; ++half) {
      for (int64_t i = 0; i < head_dim / 2; ++i) {
        const int64_t src = h * head_dim + 2 * i + half;
        const int64_t dst = h * head_dim + half * head_dim / 2 + i;
        std::memcpy(hf.data() + dst * cols, gguf.data() + src * cols, static_cast<size_t>(cols) * 4);
      }
    }
  }
  return hf;
}

std::vector<float> last_logits(Engine& engine, const std::vector<int32_t>& prompt) {
  GenerationRequest r;
  r.prompt = prompt;
  r.sampling.temperature = 0;
  r.max_tokens = 1;
  OfflineRunner runner(engine, {.keep_first_logits = true});
  auto results = runner.run({&r, 1});
  REQUIRE(results.is_ok());
  REQUIRE((*results)[0].error.is_ok());
  return (*results)[0].first_logits;
}

}  // namespace

TEST_CASE("a safetensors directory and the GGUF it came from give the same logits", "[engine][formats]") {
  const std::string model = testing::require_test_model();
  auto gguf = loader::GgufFile::open(model);
  REQUIRE(gguf.is_ok());
  auto config = models::config_from_gguf(*gguf);
  REQUIRE(config.is_ok());

  // Convert: every tensor dequantized to F32 under its Hugging Face name.
  TempDir dir;
  std::vector<loader::testing::SafetensorsEntry> entries;
  for (const models::WeightSpec& spec : models::weight_specs(*config)) {
    const loader::GgufTensorInfo* info = gguf->find_tensor(spec.gguf_name);
    REQUIRE(info != nullptr);
    std::vector<float> values(static_cast<size_t>(info->num_elements));
    REQUIRE(gguf->dequantize_tensor(*info, values).is_ok());
    if (spec.gguf_name.ends_with("attn_q.weight")) {
      values = unpermute_rows(values, config->num_attention_heads, config->head_dim, config->hidden_size);
    } else if (spec.gguf_name.ends_with("attn_k.weight")) {
      values = unpermute_rows(values, config->num_kv_heads, config->head_dim, config->hidden_size);
    }
    std::vector<std::byte> bytes(values.size() * 4);
    std::memcpy(bytes.data(), values.data(), bytes.size());
    entries.push_back({spec.hf_name, "F32", spec.shape, std::move(bytes)});
  }
  {
    const auto file = loader::testing::make_safetensors(entries);
    std::ofstream out(dir.path / "model.safetensors", std::ios::binary);
    out.write(reinterpret_cast<const char*>(file.data()), static_cast<std::streamsize>(file.size()));
    REQUIRE(out.good());
  }
  entries.clear();
  fs::copy_file(testing::fixtures_dir(TESSERA_FIXTURES_DIR) + "/models/smollm2-135m-instruct/config.json",
                dir.path / "config.json");

  EngineOptions o;
  o.weight_mode = models::WeightMode::kDequantizeF32;
  o.kv_dtype = KvDtype::kF32;
  o.kv_cache_tokens = 1024;
  auto from_gguf = Engine::load({model, LoadFormat::kGguf, 0}, o);
  REQUIRE(from_gguf.is_ok());
  auto from_dir = Engine::load({dir.path.string(), LoadFormat::kAuto, 0}, o);
  INFO(from_dir.status().message());
  REQUIRE(from_dir.is_ok());

  const auto prompts = testing::load_reference_prompts();
  for (size_t i : {2u, 7u, 17u}) {
    INFO("prompt " << prompts[i].name);
    const auto a = last_logits(**from_gguf, prompts[i].token_ids);
    const auto b = last_logits(**from_dir, prompts[i].token_ids);
    CHECK(testing::max_relative_error(b, a) < 1e-5);
    CHECK(testing::max_relative_error(b, prompts[i].last_logits) < 1e-3);
  }
}

TEST_CASE("the dummy load format gives a deterministic model of any config", "[engine][formats]") {
  TempDir dir;
  {
    std::ofstream out(dir.path / "config.json");
    out << R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
               "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
               "num_key_value_heads": 2, "vocab_size": 512, "max_position_embeddings": 256,
               "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": false,
               "bos_token_id": 1, "eos_token_id": 2})";
  }
  EngineOptions o;
  o.kv_cache_tokens = 256;
  auto run = [&](uint64_t seed) {
    auto e = Engine::load({dir.path.string(), LoadFormat::kDummy, seed}, o);
    INFO(e.status().message());
    REQUIRE(e.is_ok());
    return last_logits(**e, {1, 5, 9, 200, 7});
  };
  const auto a = run(7), b = run(7), c = run(8);
  REQUIRE(a.size() == 512);
  for (float v : a) REQUIRE(std::isfinite(v));
  REQUIRE(std::memcmp(a.data(), b.data(), a.size() * 4) == 0);
  REQUIRE(std::memcmp(a.data(), c.data(), a.size() * 4) != 0);
}

TEST_CASE("the KV cache can be sized in bytes", "[engine]") {
  const std::string dir = testing::family_dir("llama3");
  EngineOptions o;
  o.page_size = 4;
  // 2 layers x 2 kv heads x 16 dims x 4 tokens x 2 (K, V) x 2 bytes (half) = 1024 bytes a page.
  o.kv_cache_bytes = 5 * 1024 + 100;
  auto e = Engine::load({dir, LoadFormat::kSafetensors, 0}, o);
  REQUIRE(e.is_ok());
  REQUIRE((*e)->num_pages() == 5);
  REQUIRE((*e)->kv_cache_bytes() == 5 * 1024);
  o.kv_cache_bytes = 1000;
  REQUIRE(Engine::load({dir, LoadFormat::kSafetensors, 0}, o).status().code() == StatusCode::kInvalidArgument);
}
