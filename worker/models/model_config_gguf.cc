// ModelConfig from GGUF metadata: `general.architecture` names the key prefix of the
// hyper-parameters (`llama.block_count`, `qwen2.attention.head_count_kv`, ...).
#include <algorithm>
#include <cmath>

#include "worker/loader/gguf_file.h"
#include "worker/models/model_config.h"

namespace tessera::models {
namespace {

struct GgufArch {
  std::string_view name;
  ModelFamily family;
};
// Mistral models convert to the "llama" architecture in GGUF.
constexpr GgufArch kArchs[] = {
    {"llama", ModelFamily::kLlama},
    {"qwen2", ModelFamily::kQwen2},
    {"minicpm", ModelFamily::kMiniCpm},
};

// GGUF `general.file_type` names (llama.cpp's LLAMA_FTYPE_*), for reporting only.
std::string file_type_name(uint64_t t) {
  switch (t) {
    case 0: return "f32";
    case 1: return "f16";
    case 2: return "q4_0";
    case 3: return "q4_1";
    case 7: return "q8_0";
    case 8: return "q5_0";
    case 9: return "q5_1";
    case 10: return "q2_k";
    case 11: return "q3_k_s";
    case 12: return "q3_k_m";
    case 13: return "q3_k_l";
    case 14: return "q4_k_s";
    case 15: return "q4_k_m";
    case 16: return "q5_k_s";
    case 17: return "q5_k_m";
    case 18: return "q6_k";
    case 32: return "bf16";
    default: return "gguf file_type " + std::to_string(t);
  }
}

class Keys {
 public:
  Keys(const loader::GgufFile& file, std::string arch) : file_(file), arch_(std::move(arch)) {}

  Status required_uint(std::string_view suffix, uint32_t& out) const {
    const std::string key = arch_ + "." + std::string(suffix);
    auto v = file_.get_uint(key);
    if (!v) return file_.find(key) ? wrong(key, "an unsigned integer") : missing(key);
    if (*v > UINT32_MAX) return wrong(key, "below 2^32");
    out = static_cast<uint32_t>(*v);
    return Status::ok();
  }
  Status optional_uint(std::string_view suffix, uint32_t& out) const {
    if (!file_.find(arch_ + "." + std::string(suffix))) return Status::ok();
    return required_uint(suffix, out);
  }
  Status optional_float(std::string_view suffix, double& out) const {
    const std::string key = arch_ + "." + std::string(suffix);
    if (!file_.find(key)) return Status::ok();
    auto v = file_.get_float(key);
    if (!v) return wrong(key, "a float");
    out = *v;
    return Status::ok();
  }
  // A tokenizer id key (`tokenizer.ggml.*_token_id`), -1 when absent.
  int32_t token_id(std::string_view key) const {
    auto v = file_.get_uint(key);
    return v && *v <= INT32_MAX ? static_cast<int32_t>(*v) : -1;
  }

 private:
  Status missing(const std::string& key) const { return not_found("GGUF metadata key '" + key + "' is missing"); }
  Status wrong(const std::string& key, std::string_view expected) const {
    return invalid_argument("GGUF metadata key '" + key + "' must be " + std::string(expected));
  }
  const loader::GgufFile& file_;
  std::string arch_;
};

}  // namespace

Result<ModelConfig> config_from_gguf(const loader::GgufFile& file) {
  auto arch = file.get_string("general.architecture");
  if (!arch) return not_found("GGUF metadata key 'general.architecture' is missing");
  ModelConfig c;
  c.architecture = std::string(*arch);
  const GgufArch* known = nullptr;
  for (const auto& a : kArchs) {
    if (a.name == *arch) known = &a;
  }
  if (known == nullptr) {
    return unimplemented("unsupported GGUF architecture '" + c.architecture + "'; supported: llama, qwen2, minicpm");
  }
  c.family = known->family;
  Keys k(file, c.architecture);

  TESSERA_RETURN_IF_ERROR(k.required_uint("embedding_length", c.hidden_size));
  TESSERA_RETURN_IF_ERROR(k.required_uint("feed_forward_length", c.intermediate_size));
  TESSERA_RETURN_IF_ERROR(k.required_uint("block_count", c.num_layers));
  TESSERA_RETURN_IF_ERROR(k.required_uint("attention.head_count", c.num_attention_heads));
  c.num_kv_heads = c.num_attention_heads;
  TESSERA_RETURN_IF_ERROR(k.optional_uint("attention.head_count_kv", c.num_kv_heads));
  c.head_dim = c.num_attention_heads ? c.hidden_size / c.num_attention_heads : 0;
  TESSERA_RETURN_IF_ERROR(k.optional_uint("attention.key_length", c.head_dim));
  TESSERA_RETURN_IF_ERROR(k.required_uint("context_length", c.max_position_embeddings));
  TESSERA_RETURN_IF_ERROR(k.optional_float("attention.layer_norm_rms_epsilon", c.rms_norm_eps));
  TESSERA_RETURN_IF_ERROR(k.optional_float("rope.freq_base", c.rope_theta));

  // The vocabulary size: the explicit key, else the tokenizer's token list, else the
  // embedding matrix's row count.
  if (file.find(c.architecture + ".vocab_size")) {
    TESSERA_RETURN_IF_ERROR(k.required_uint("vocab_size", c.vocab_size));
  } else if (const auto* tokens = file.find("tokenizer.ggml.tokens"); tokens && tokens->is_array()) {
    c.vocab_size = static_cast<uint32_t>(tokens->num_elements());
  } else if (const auto* embd = file.find_tensor("token_embd.weight"); embd && embd->dims.size() == 2) {
    c.vocab_size = static_cast<uint32_t>(embd->dims[1]);
  } else {
    return not_found("cannot tell the vocabulary size: no '" + c.architecture +
                     ".vocab_size', 'tokenizer.ggml.tokens' or 'token_embd.weight'");
  }

  if (auto type = file.get_string(c.architecture + ".rope.scaling.type"); type && *type != "none") {
    if (*type != "linear") {
      return unimplemented("GGUF rope scaling type '" + std::string(*type) + "' is not supported (supported: none, linear)");
    }
    c.rope_scaling.type = RopeScalingType::kLinear;
    TESSERA_RETURN_IF_ERROR(k.optional_float("rope.scaling.factor", c.rope_scaling.factor));
  }
  c.rope_freqs_from_tensor = file.find_tensor("rope_freqs.weight") != nullptr;
  // A GGUF model without an output matrix reuses the embedding (tied weights).
  c.tie_word_embeddings = file.find_tensor("output.weight") == nullptr;
  c.attention_bias = file.find_tensor("blk.0.attn_q.bias") != nullptr;

  if (c.family == ModelFamily::kMiniCpm) {
    TESSERA_RETURN_IF_ERROR(k.optional_float("embedding_scale", c.embedding_scale));
    TESSERA_RETURN_IF_ERROR(k.optional_float("residual_scale", c.residual_scale));
    // GGUF stores hidden_size / dim_model_base, by which the hidden state is divided.
    double divisor = 1.0;
    TESSERA_RETURN_IF_ERROR(k.optional_float("logit_scale", divisor));
    if (!(divisor > 0.0)) return invalid_argument("GGUF metadata key 'minicpm.logit_scale' must be positive");
    c.logit_scale = 1.0 / divisor;
  }

  c.bos_token_id = k.token_id("tokenizer.ggml.bos_token_id");
  c.pad_token_id = k.token_id("tokenizer.ggml.padding_token_id");
  // Chat models end turns with EOT/EOM tokens besides EOS (Llama 3.1's <|eot_id|>, <|eom_id|>).
  for (std::string_view key : {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"}) {
    int32_t id = k.token_id(key);
    if (id >= 0 && std::find(c.eos_token_ids.begin(), c.eos_token_ids.end(), id) == c.eos_token_ids.end()) {
      c.eos_token_ids.push_back(id);
    }
  }
  if (auto ft = file.get_uint("general.file_type")) c.weight_dtype = file_type_name(*ft);

  TESSERA_RETURN_IF_ERROR(c.validate());
  std::vector<std::string> names;
  names.reserve(file.tensors().size());
  for (const auto& t : file.tensors()) names.push_back(t.name);
  TESSERA_RETURN_IF_ERROR(check_weights_present(c, NameStyle::kGguf, names));
  return c;
}

}  // namespace tessera::models
