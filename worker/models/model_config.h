// ModelConfig: the shape and hyper-parameters of a llama-family model, read from a
// Hugging Face `config.json` or from GGUF metadata, and the list of weights such a model
// has. One struct for Llama 2/3/3.1/3.2, Mistral, Qwen2/2.5, SmolLM2 and MiniCPM: the
// families differ only in flags (qkv bias, tied embeddings, scale factors, rope scaling).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "tessera/common/status.h"

namespace tessera::loader {
class GgufFile;
}

namespace tessera::models {

enum class ModelFamily { kLlama, kMistral, kQwen2, kMiniCpm };
std::string_view family_name(ModelFamily family);

enum class RopeScalingType { kNone, kLinear, kLlama3 };

struct RopeScaling {
  RopeScalingType type = RopeScalingType::kNone;
  // kLinear: positions are divided by factor. kLlama3: long wavelengths are divided by
  // factor, short ones kept, the band between interpolated (Llama 3.1's "llama3" type).
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  uint32_t original_max_position_embeddings = 8192;
};

struct ModelConfig {
  ModelFamily family = ModelFamily::kLlama;
  // Architecture as the file names it ("LlamaForCausalLM", or GGUF's "llama").
  std::string architecture;
  uint32_t vocab_size = 0;
  uint32_t hidden_size = 0;
  uint32_t intermediate_size = 0;
  uint32_t num_layers = 0;
  uint32_t num_attention_heads = 0;
  uint32_t num_kv_heads = 0;  // < num_attention_heads means grouped-query attention
  uint32_t head_dim = 0;      // usually hidden_size / num_attention_heads; Mistral-Nemo differs
  uint32_t max_position_embeddings = 0;  // context length in tokens
  double rms_norm_eps = 1e-5;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  // GGUF files of llama3-scaled models carry the per-dimension frequency divisors as a
  // `rope_freqs.weight` tensor instead of the scaling parameters.
  bool rope_freqs_from_tensor = false;
  // Mistral's sliding attention window in tokens; 0: full attention.
  uint32_t sliding_window = 0;
  bool tie_word_embeddings = false;  // lm_head shares the embedding matrix
  bool attention_bias = false;       // q/k/v projections carry a bias (Qwen2)
  // MiniCPM's muP-style scales; 1 for every other family.
  double embedding_scale = 1.0;  // embeddings are multiplied by this
  double residual_scale = 1.0;   // each block's output is multiplied by this before the residual add
  double logit_scale = 1.0;      // final hidden state is multiplied by this before lm_head
  int32_t bos_token_id = -1;     // -1: none
  std::vector<int32_t> eos_token_ids;
  int32_t pad_token_id = -1;
  // Data type the weights were published in ("bfloat16", "float16", or a GGUF file type).
  std::string weight_dtype;

  // Shapes agree with each other (heads divide, GQA ratio integral, ...).
  Status validate() const;
  // Parameters, counting a tied lm_head once.
  uint64_t num_parameters() const;
};

// Parses a Hugging Face config.json text; `source` names it in errors.
Result<ModelConfig> parse_hf_config(std::string_view json_text, std::string_view source);
// Reads <dir>/config.json (or a config.json path) and, when present next to it,
// generation_config.json for the EOS ids a chat model actually stops on.
Result<ModelConfig> load_hf_config(const std::string& path);
// Reads a GGUF file's `general.architecture` and `<arch>.*` / `tokenizer.ggml.*` metadata.
Result<ModelConfig> config_from_gguf(const loader::GgufFile& file);

// One weight tensor of the model, with its name in both file conventions.
struct WeightSpec {
  std::string hf_name;    // "model.layers.3.self_attn.q_proj.weight"
  std::string gguf_name;  // "blk.3.attn_q.weight"
  std::vector<int64_t> shape;  // row-major, HF order: [out_features, in_features]
  bool is_norm = false;        // RMSNorm weight (initialised to ~1 by the dummy format)
  bool is_bias = false;
};

// Every tensor the model needs, in a fixed order (embedding, layers, final norm, lm_head).
std::vector<WeightSpec> weight_specs(const ModelConfig& config);

enum class NameStyle { kHuggingFace, kGguf };
// Checks that every required tensor is present; the error lists the missing ones (first 10)
// and their count.
Status check_weights_present(const ModelConfig& config, NameStyle style, const std::vector<std::string>& names);

}  // namespace tessera::models
