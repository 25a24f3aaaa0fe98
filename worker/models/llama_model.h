// The llama-family transformer (Llama 2/3.x, Mistral, Qwen2/2.5, SmolLM2, MiniCPM),
// written once against engine::Backend. Families differ only in ModelConfig flags: qkv
// bias, tied embeddings, rope scaling, sliding window, MiniCPM's scales.
//
// forward() runs one step over a flat batch (StepLayout) and produces logits only for the
// rows that sample, so a prefill chunk of 512 tokens costs one lm_head row, not 512.
// Used by the engine's step thread only.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "worker/engine/backend.h"
#include "worker/loader/gguf_file.h"
#include "worker/loader/safetensors_file.h"
#include "worker/models/model_config.h"

namespace tessera::models {

enum class WeightMode {
  kNative,        // weights stay in the file's format; integer dot products on the fly
  kDequantizeF32  // every matrix dequantized to float32 at load (the reference path)
};

struct LlamaLoadOptions {
  int64_t max_batch_tokens = 512;  // rows of the activation buffers: tokens per step
  int64_t max_sample_rows = 64;    // rows of logits per step
  WeightMode weight_mode = WeightMode::kNative;
  [[nodiscard]] Status validate() const;
};

class LlamaModel {
 public:
  // Loads from an open GGUF file, which must outlive the model (weights are borrowed).
  [[nodiscard]] static Result<std::unique_ptr<LlamaModel>> from_gguf(const loader::GgufFile& file,
                                                                     engine::Backend& backend,
                                                                     const LlamaLoadOptions& options);
  // Loads a Hugging Face checkpoint (F32/F16/BF16 safetensors, Hugging Face names and
  // layout) whose config.json gave `config`; the files must outlive the model.
  [[nodiscard]] static Result<std::unique_ptr<LlamaModel>> from_safetensors(const loader::SafetensorsModel& files,
                                                                            const ModelConfig& config,
                                                                            engine::Backend& backend,
                                                                            const LlamaLoadOptions& options);
  // The dummy load format: `config` filled with seeded random bfloat16 weights
  // (models/dummy_weights.h), for benchmarks of shapes we cannot download.
  [[nodiscard]] static Result<std::unique_ptr<LlamaModel>> from_dummy(const ModelConfig& config, uint64_t seed,
                                                                      engine::Backend& backend,
                                                                      const LlamaLoadOptions& options);

  const ModelConfig& config() const { return config_; }
  const LlamaLoadOptions& options() const { return options_; }
  // Bytes of weights as the backend holds them.
  int64_t weight_bytes() const { return weight_bytes_; }

  // Runs the step and leaves logits for layout.sample_rows (indices into the step's
  // tokens) in logits() [sample_rows.size(), vocab]. Precondition: backend.begin_step(layout)
  // was called, sizes within the load options.
  [[nodiscard]] Status forward(const engine::StepLayout& layout);
  engine::Act logits() const { return logits_; }

  // Where loading finds each tensor of weight_specs(config) (defined with the loaders).
  struct TensorSource;

 private:
  struct Layer {
    engine::Act attn_norm, ffn_norm;
    engine::WeightTensor wq, wk, wv, wo, w_gate, w_up, w_down;
    engine::Act bq, bk, bv;
  };

  LlamaModel(engine::Backend& backend, ModelConfig config, LlamaLoadOptions options)
      : backend_(backend), config_(std::move(config)), options_(options) {}
  [[nodiscard]] static Result<std::unique_ptr<LlamaModel>> load(const ModelConfig& config, TensorSource& source,
                                                                engine::RopeStyle rope_style,
                                                                std::span<const float> rope_freq_divisors,
                                                                engine::Backend& backend,
                                                                const LlamaLoadOptions& options);
  [[nodiscard]] Status allocate_activations();

  engine::Backend& backend_;
  ModelConfig config_;
  LlamaLoadOptions options_;
  engine::RopeStyle rope_style_ = engine::RopeStyle::kHalf;
  std::vector<float> inv_freq_;  // [head_dim / 2]
  engine::WeightTensor embedding_;
  engine::WeightTensor lm_head_;
  engine::Act final_norm_;
  std::vector<Layer> layers_;
  int64_t weight_bytes_ = 0;
  // Dequantized weights (WeightMode::kDequantizeF32) and generated ones (dummy) live here.
  std::vector<std::vector<float>> owned_weights_;
  std::vector<std::vector<uint16_t>> owned_bf16_;
  // Activations [max_batch_tokens, width], in the backend's activation type.
  engine::Act x_;        // the residual stream
  engine::Act h_;        // normed states, and each sub-layer's output
  engine::Act qkv_;      // [tokens, (heads + 2 * kv_heads) * head_dim]: q, then k, then v
  engine::Act attn_;
  engine::Act gate_up_;  // [tokens, 2 * intermediate]: gate then up
  engine::Act act_;
  engine::Act sample_hidden_;  // [max_sample_rows, hidden]
  engine::Act logits_;         // [max_sample_rows, vocab]
};

// Per-dimension inverse rotary frequencies of a config (rope scaling applied), as Hugging
// Face computes them in float32; freq_divisors (GGUF rope_freqs) divide them when given.
std::vector<float> rope_inv_freq(const ModelConfig& config, std::span<const float> freq_divisors = {});

}  // namespace tessera::models
