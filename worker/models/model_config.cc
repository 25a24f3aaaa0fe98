#include "worker/models/model_config.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "tessera/common/files.h"

namespace tessera::models {
namespace {

using nlohmann::json;

struct FamilyName {
  std::string_view model_type;
  ModelFamily family;
};
constexpr FamilyName kFamilies[] = {
    {"llama", ModelFamily::kLlama},
    {"mistral", ModelFamily::kMistral},
    {"qwen2", ModelFamily::kQwen2},
    {"minicpm", ModelFamily::kMiniCpm},
};

std::string supported_list() {
  std::string s;
  for (const auto& f : kFamilies) {
    if (!s.empty()) s += ", ";
    s += f.model_type;
  }
  return s;
}

// Reads JSON fields with errors that name the source and the key.
class JsonFields {
 public:
  JsonFields(const json& j, std::string_view source) : j_(j), source_(source) {}

  // Required unsigned integer; missing, null or wrong type is an error.
  Status uint(std::string_view key, uint32_t& out) const {
    auto it = j_.find(key);
    if (it == j_.end() || it->is_null()) return missing(key);
    if (!it->is_number_unsigned() && !(it->is_number_integer() && it->get<int64_t>() >= 0)) return wrong(key, "a non-negative integer");
    if (it->get<uint64_t>() > UINT32_MAX) return wrong(key, "an integer below 2^32");
    out = it->get<uint32_t>();
    return Status::ok();
  }
  // Optional fields keep `out` when absent or null.
  Status opt_uint(std::string_view key, uint32_t& out) const {
    if (!present(key)) return Status::ok();
    return uint(key, out);
  }
  Status opt_number(std::string_view key, double& out) const {
    if (!present(key)) return Status::ok();
    const json& v = j_.at(std::string(key));
    if (!v.is_number()) return wrong(key, "a number");
    out = v.get<double>();
    return Status::ok();
  }
  Status opt_bool(std::string_view key, bool& out) const {
    if (!present(key)) return Status::ok();
    const json& v = j_.at(std::string(key));
    if (!v.is_boolean()) return wrong(key, "true or false");
    out = v.get<bool>();
    return Status::ok();
  }
  Status opt_string(std::string_view key, std::string& out) const {
    if (!present(key)) return Status::ok();
    const json& v = j_.at(std::string(key));
    if (!v.is_string()) return wrong(key, "a string");
    out = v.get<std::string>();
    return Status::ok();
  }
  // A token id field that may be an integer or a list of integers (eos_token_id).
  Status opt_token_ids(std::string_view key, std::vector<int32_t>& out) const {
    if (!present(key)) return Status::ok();
    const json& v = j_.at(std::string(key));
    std::vector<int32_t> ids;
    auto add = [&](const json& x) {
      if (!x.is_number_integer() || x.get<int64_t>() < 0 || x.get<int64_t>() > INT32_MAX) return false;
      ids.push_back(x.get<int32_t>());
      return true;
    };
    if (v.is_array()) {
      for (const auto& x : v) {
        if (!add(x)) return wrong(key, "a token id or a list of token ids");
      }
    } else if (!add(v)) {
      return wrong(key, "a token id or a list of token ids");
    }
    out = std::move(ids);
    return Status::ok();
  }
  Status opt_token_id(std::string_view key, int32_t& out) const {
    std::vector<int32_t> ids;
    TESSERA_RETURN_IF_ERROR(opt_token_ids(key, ids));
    if (ids.size() > 1) return wrong(key, "a single token id");
    if (!ids.empty()) out = ids[0];
    return Status::ok();
  }
  bool present(std::string_view key) const {
    auto it = j_.find(key);
    return it != j_.end() && !it->is_null();
  }

 private:
  Status missing(std::string_view key) const {
    return invalid_argument(std::string(source_) + ": missing required key '" + std::string(key) + "'");
  }
  Status wrong(std::string_view key, std::string_view expected) const {
    return invalid_argument(std::string(source_) + ": '" + std::string(key) + "' must be " + std::string(expected) +
                            " (got " + j_.at(std::string(key)).dump() + ")");
  }
  const json& j_;
  std::string_view source_;
};

Status parse_rope_scaling(const json& j, std::string_view source, RopeScaling& out) {
  if (!j.is_object()) return invalid_argument(std::string(source) + ": 'rope_scaling' must be an object or null");
  JsonFields f(j, source);
  std::string type;
  TESSERA_RETURN_IF_ERROR(f.opt_string("type", type));
  TESSERA_RETURN_IF_ERROR(f.opt_string("rope_type", type));  // newer configs name it rope_type
  if (type == "default" || type.empty()) {
    out.type = RopeScalingType::kNone;
    return Status::ok();
  }
  if (type == "linear") {
    out.type = RopeScalingType::kLinear;
  } else if (type == "llama3") {
    out.type = RopeScalingType::kLlama3;
    TESSERA_RETURN_IF_ERROR(f.opt_number("low_freq_factor", out.low_freq_factor));
    TESSERA_RETURN_IF_ERROR(f.opt_number("high_freq_factor", out.high_freq_factor));
    TESSERA_RETURN_IF_ERROR(f.opt_uint("original_max_position_embeddings", out.original_max_position_embeddings));
  } else {
    return unimplemented(std::string(source) + ": rope_scaling type '" + type +
                         "' is not supported (supported: default, linear, llama3)");
  }
  if (!f.present("factor")) return invalid_argument(std::string(source) + ": rope_scaling needs 'factor'");
  TESSERA_RETURN_IF_ERROR(f.opt_number("factor", out.factor));
  if (!(out.factor >= 1.0)) return invalid_argument(std::string(source) + ": rope_scaling.factor must be >= 1");
  return Status::ok();
}

}  // namespace

std::string_view family_name(ModelFamily family) {
  for (const auto& f : kFamilies) {
    if (f.family == family) return f.model_type;
  }
  return "?";
}

Status ModelConfig::validate() const {
  auto bad = [](const std::string& m) { return invalid_argument("model config: " + m); };
  if (vocab_size == 0 || hidden_size == 0 || intermediate_size == 0 || num_layers == 0 || num_attention_heads == 0) {
    return bad("vocab_size, hidden_size, intermediate_size, num_layers and num_attention_heads must all be positive");
  }
  if (num_kv_heads == 0 || num_attention_heads % num_kv_heads != 0) {
    return bad("num_attention_heads (" + std::to_string(num_attention_heads) + ") must be a multiple of num_kv_heads (" +
               std::to_string(num_kv_heads) + ")");
  }
  if (head_dim == 0 || head_dim % 2 != 0) return bad("head_dim must be a positive even number (got " + std::to_string(head_dim) + ")");
  if (max_position_embeddings == 0) return bad("the context length must be positive");
  if (!(rms_norm_eps > 0.0)) return bad("rms_norm_eps must be positive");
  if (!(rope_theta > 0.0)) return bad("rope_theta must be positive");
  if (bos_token_id >= static_cast<int64_t>(vocab_size)) return bad("bos_token_id is outside the vocabulary");
  for (int32_t id : eos_token_ids) {
    if (id >= static_cast<int64_t>(vocab_size)) return bad("eos token id " + std::to_string(id) + " is outside the vocabulary");
  }
  return Status::ok();
}

uint64_t ModelConfig::num_parameters() const {
  uint64_t total = 0;
  for (const auto& spec : weight_specs(*this)) {
    uint64_t n = 1;
    for (int64_t d : spec.shape) n *= static_cast<uint64_t>(d);
    total += n;
  }
  return total;
}

Result<ModelConfig> parse_hf_config(std::string_view json_text, std::string_view source) {
  json j;
  try {
    j = json::parse(json_text);
  } catch (const json::parse_error& e) {
    return invalid_argument(std::string(source) + ": not valid JSON: " + e.what());
  }
  if (!j.is_object()) return invalid_argument(std::string(source) + ": expected a JSON object");
  JsonFields f(j, source);
  ModelConfig c;

  std::string model_type;
  TESSERA_RETURN_IF_ERROR(f.opt_string("model_type", model_type));
  if (j.contains("architectures") && j["architectures"].is_array() && !j["architectures"].empty() &&
      j["architectures"][0].is_string()) {
    c.architecture = j["architectures"][0].get<std::string>();
  }
  bool known = false;
  for (const auto& fam : kFamilies) {
    if (model_type == fam.model_type) {
      c.family = fam.family;
      known = true;
    }
  }
  if (!known) {
    return unimplemented(std::string(source) + ": unsupported architecture '" + c.architecture + "' (model_type '" +
                         model_type + "'); supported model types: " + supported_list());
  }

  TESSERA_RETURN_IF_ERROR(f.uint("vocab_size", c.vocab_size));
  TESSERA_RETURN_IF_ERROR(f.uint("hidden_size", c.hidden_size));
  TESSERA_RETURN_IF_ERROR(f.uint("intermediate_size", c.intermediate_size));
  TESSERA_RETURN_IF_ERROR(f.uint("num_hidden_layers", c.num_layers));
  TESSERA_RETURN_IF_ERROR(f.uint("num_attention_heads", c.num_attention_heads));
  c.num_kv_heads = c.num_attention_heads;
  TESSERA_RETURN_IF_ERROR(f.opt_uint("num_key_value_heads", c.num_kv_heads));
  c.head_dim = c.num_attention_heads ? c.hidden_size / c.num_attention_heads : 0;
  TESSERA_RETURN_IF_ERROR(f.opt_uint("head_dim", c.head_dim));
  TESSERA_RETURN_IF_ERROR(f.uint("max_position_embeddings", c.max_position_embeddings));
  TESSERA_RETURN_IF_ERROR(f.opt_number("rms_norm_eps", c.rms_norm_eps));
  TESSERA_RETURN_IF_ERROR(f.opt_number("rope_theta", c.rope_theta));
  if (f.present("rope_scaling")) {
    TESSERA_RETURN_IF_ERROR(parse_rope_scaling(j["rope_scaling"], source, c.rope_scaling));
  }
  TESSERA_RETURN_IF_ERROR(f.opt_bool("tie_word_embeddings", c.tie_word_embeddings));
  // Qwen2 always has q/k/v biases; Llama-style configs say so with attention_bias.
  c.attention_bias = c.family == ModelFamily::kQwen2;
  TESSERA_RETURN_IF_ERROR(f.opt_bool("attention_bias", c.attention_bias));
  bool mlp_bias = false;
  TESSERA_RETURN_IF_ERROR(f.opt_bool("mlp_bias", mlp_bias));
  if (mlp_bias) return unimplemented(std::string(source) + ": mlp_bias=true is not supported");
  if (c.family == ModelFamily::kMistral || c.family == ModelFamily::kQwen2) {
    bool use_sliding = c.family == ModelFamily::kMistral;
    TESSERA_RETURN_IF_ERROR(f.opt_bool("use_sliding_window", use_sliding));
    uint32_t window = 0;
    TESSERA_RETURN_IF_ERROR(f.opt_uint("sliding_window", window));
    if (use_sliding && window < c.max_position_embeddings) c.sliding_window = window;
  }
  if (c.family == ModelFamily::kMiniCpm) {
    double scale_emb = 1.0, scale_depth = 1.0, dim_model_base = c.hidden_size;
    TESSERA_RETURN_IF_ERROR(f.opt_number("scale_emb", scale_emb));
    TESSERA_RETURN_IF_ERROR(f.opt_number("scale_depth", scale_depth));
    TESSERA_RETURN_IF_ERROR(f.opt_number("dim_model_base", dim_model_base));
    c.embedding_scale = scale_emb;
    // MiniCPM scales each residual branch by scale_depth / sqrt(num_layers) and divides
    // the final hidden state by hidden_size / dim_model_base before lm_head.
    c.residual_scale = scale_depth / std::sqrt(static_cast<double>(c.num_layers));
    c.logit_scale = dim_model_base / static_cast<double>(c.hidden_size);
  }
  TESSERA_RETURN_IF_ERROR(f.opt_token_id("bos_token_id", c.bos_token_id));
  TESSERA_RETURN_IF_ERROR(f.opt_token_ids("eos_token_id", c.eos_token_ids));
  TESSERA_RETURN_IF_ERROR(f.opt_token_id("pad_token_id", c.pad_token_id));
  TESSERA_RETURN_IF_ERROR(f.opt_string("torch_dtype", c.weight_dtype));
  TESSERA_RETURN_IF_ERROR(f.opt_string("dtype", c.weight_dtype));  // newer transformers
  TESSERA_RETURN_IF_ERROR(c.validate().with_context(source));
  return c;
}

Result<ModelConfig> load_hf_config(const std::string& path) {
  std::filesystem::path p(path);
  if (!std::filesystem::exists(p)) return not_found(path + ": no such file or directory");
  std::filesystem::path dir = std::filesystem::is_directory(p) ? p : p.parent_path();
  std::filesystem::path config_path = std::filesystem::is_directory(p) ? p / "config.json" : p;
  auto text = read_file(config_path, "model config");
  if (!text.is_ok()) return text.status();
  auto config = parse_hf_config(*text, config_path.string());
  if (!config.is_ok()) return config;
  // A chat model's generation_config.json lists the ids it really stops on (Llama 3.1:
  // end_of_text, eom and eot), which config.json often leaves out.
  std::filesystem::path gen_path = dir / "generation_config.json";
  if (std::filesystem::exists(gen_path)) {
    auto gen_text = read_file(gen_path, "generation config");
    if (!gen_text.is_ok()) return gen_text.status();
    json g;
    try {
      g = json::parse(*gen_text);
    } catch (const json::parse_error& e) {
      return invalid_argument(gen_path.string() + ": not valid JSON: " + e.what());
    }
    std::vector<int32_t> eos;
    TESSERA_RETURN_IF_ERROR(JsonFields(g, gen_path.string()).opt_token_ids("eos_token_id", eos));
    for (int32_t id : eos) {
      if (std::find(config->eos_token_ids.begin(), config->eos_token_ids.end(), id) == config->eos_token_ids.end()) {
        config->eos_token_ids.push_back(id);
      }
    }
    TESSERA_RETURN_IF_ERROR(config->validate().with_context(gen_path.string()));
  }
  return config;
}

std::vector<WeightSpec> weight_specs(const ModelConfig& c) {
  const int64_t hidden = c.hidden_size, inter = c.intermediate_size, vocab = c.vocab_size;
  const int64_t q_dim = int64_t{c.num_attention_heads} * c.head_dim;
  const int64_t kv_dim = int64_t{c.num_kv_heads} * c.head_dim;
  std::vector<WeightSpec> specs;
  specs.push_back({"model.embed_tokens.weight", "token_embd.weight", {vocab, hidden}});
  for (uint32_t i = 0; i < c.num_layers; ++i) {
    const std::string hf = "model.layers." + std::to_string(i) + ".";
    const std::string gg = "blk." + std::to_string(i) + ".";
    specs.push_back({hf + "input_layernorm.weight", gg + "attn_norm.weight", {hidden}, true});
    specs.push_back({hf + "self_attn.q_proj.weight", gg + "attn_q.weight", {q_dim, hidden}});
    specs.push_back({hf + "self_attn.k_proj.weight", gg + "attn_k.weight", {kv_dim, hidden}});
    specs.push_back({hf + "self_attn.v_proj.weight", gg + "attn_v.weight", {kv_dim, hidden}});
    if (c.attention_bias) {
      specs.push_back({hf + "self_attn.q_proj.bias", gg + "attn_q.bias", {q_dim}, false, true});
      specs.push_back({hf + "self_attn.k_proj.bias", gg + "attn_k.bias", {kv_dim}, false, true});
      specs.push_back({hf + "self_attn.v_proj.bias", gg + "attn_v.bias", {kv_dim}, false, true});
    }
    specs.push_back({hf + "self_attn.o_proj.weight", gg + "attn_output.weight", {hidden, q_dim}});
    specs.push_back({hf + "post_attention_layernorm.weight", gg + "ffn_norm.weight", {hidden}, true});
    specs.push_back({hf + "mlp.gate_proj.weight", gg + "ffn_gate.weight", {inter, hidden}});
    specs.push_back({hf + "mlp.up_proj.weight", gg + "ffn_up.weight", {inter, hidden}});
    specs.push_back({hf + "mlp.down_proj.weight", gg + "ffn_down.weight", {hidden, inter}});
  }
  specs.push_back({"model.norm.weight", "output_norm.weight", {hidden}, true});
  if (!c.tie_word_embeddings) specs.push_back({"lm_head.weight", "output.weight", {vocab, hidden}});
  return specs;
}

Status check_weights_present(const ModelConfig& config, NameStyle style, const std::vector<std::string>& names) {
  std::vector<std::string> sorted = names;
  std::sort(sorted.begin(), sorted.end());
  std::vector<std::string> missing;
  for (const auto& spec : weight_specs(config)) {
    const std::string& name = style == NameStyle::kGguf ? spec.gguf_name : spec.hf_name;
    if (!std::binary_search(sorted.begin(), sorted.end(), name)) missing.push_back(name);
  }
  if (missing.empty()) return Status::ok();
  std::string m = std::to_string(missing.size()) + " required tensor(s) missing: ";
  for (std::size_t i = 0; i < missing.size() && i < 10; ++i) {
    if (i) m += ", ";
    m += missing[i];
  }
  if (missing.size() > 10) m += ", ...";
  return not_found(m);
}

}  // namespace tessera::models
