#include "worker/models/llama_model.h"

#include <cmath>
#include <numbers>
#include <unordered_map>

#include "kernels/cpu/dequantize.h"
#include "kernels/cpu/matmul.h"
#include "worker/models/dummy_weights.h"

namespace tessera::models {

namespace kc = kernels::cpu;
using kc::GgmlType;
using engine::MatmulTarget;
using engine::WeightTensor;

Status LlamaLoadOptions::validate() const {
  if (max_batch_tokens < 1) return invalid_argument("max_batch_tokens must be at least 1");
  if (max_sample_rows < 1 || max_sample_rows > max_batch_tokens) {
    return invalid_argument("max_sample_rows must be in [1, max_batch_tokens]");
  }
  return Status::ok();
}

std::vector<float> rope_inv_freq(const ModelConfig& c, std::span<const float> freq_divisors) {
  const int64_t dim = c.head_dim;
  std::vector<float> inv(static_cast<size_t>(dim / 2));
  const float base = static_cast<float>(c.rope_theta);
  for (int64_t i = 0; i < dim / 2; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(dim);
    inv[static_cast<size_t>(i)] = 1.0f / std::pow(base, exponent);
  }
  const RopeScaling& s = c.rope_scaling;
  if (!freq_divisors.empty()) {
    for (size_t i = 0; i < inv.size() && i < freq_divisors.size(); ++i) inv[i] /= freq_divisors[i];
  } else if (s.type == RopeScalingType::kLinear) {
    for (float& f : inv) f /= static_cast<float>(s.factor);
  } else if (s.type == RopeScalingType::kLlama3) {
    // Llama 3.1: long wavelengths slowed by `factor`, short ones kept, a smooth blend between.
    const double old_len = s.original_max_position_embeddings;
    const double low_wavelen = old_len / s.low_freq_factor;
    const double high_wavelen = old_len / s.high_freq_factor;
    for (float& f : inv) {
      const double wavelen = 2 * std::numbers::pi / f;
      if (wavelen > low_wavelen) {
        f = static_cast<float>(f / s.factor);
      } else if (wavelen >= high_wavelen) {
        const double smooth = (old_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        f = static_cast<float>((1 - smooth) * f / s.factor + smooth * f);
      }
    }
  }
  return inv;
}

namespace {

struct HostTensor {
  GgmlType type = GgmlType::kF32;
  std::span<const std::byte> bytes;
  int64_t num_elements = 0;
};

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string out;
  for (int64_t d : shape) out += (out.empty() ? "" : ", ") + std::to_string(d);
  return "[" + out + "]";
}

}  // namespace

struct LlamaModel::TensorSource {
  virtual ~TensorSource() = default;
  // The tensor of `spec` as stored: NOT_FOUND when missing, INVALID_ARGUMENT when its shape
  // or type does not fit.
  virtual Result<HostTensor> get(const WeightSpec& spec) = 0;
};

namespace {

class GgufSource final : public LlamaModel::TensorSource {
 public:
  explicit GgufSource(const loader::GgufFile& file) : file_(file) {}
  Result<HostTensor> get(const WeightSpec& spec) override {
    const loader::GgufTensorInfo* info = file_.find_tensor(spec.gguf_name);
    if (!info) return not_found("tensor " + spec.gguf_name + " is missing");
    const std::vector<int64_t> shape(info->dims.rbegin(), info->dims.rend());  // GGUF dims are reversed
    if (shape != spec.shape) {
      return invalid_argument("tensor " + spec.gguf_name + " has shape " + shape_text(shape) + ", the config needs " +
                              shape_text(spec.shape));
    }
    return HostTensor{info->type, file_.tensor_data(*info), info->num_elements};
  }

 private:
  const loader::GgufFile& file_;
};

class SafetensorsSource final : public LlamaModel::TensorSource {
 public:
  explicit SafetensorsSource(const loader::SafetensorsModel& files) : files_(files) {}
  Result<HostTensor> get(const WeightSpec& spec) override {
    const loader::TensorView* view = files_.find(spec.hf_name);
    if (!view) return not_found("tensor " + spec.hf_name + " is missing");
    if (view->shape != spec.shape) {
      return invalid_argument("tensor " + spec.hf_name + " has shape " + shape_text(view->shape) +
                              ", the config needs " + shape_text(spec.shape));
    }
    GgmlType type;
    switch (view->dtype) {
      case loader::TensorDtype::kF32: type = GgmlType::kF32; break;
      case loader::TensorDtype::kF16: type = GgmlType::kF16; break;
      case loader::TensorDtype::kBF16: type = GgmlType::kBF16; break;
      default:
        return invalid_argument("tensor " + spec.hf_name + " is " +
                                std::string(loader::tensor_dtype_name(view->dtype)) +
                                "; the engine loads F32, F16 and BF16 checkpoints");
    }
    return HostTensor{type, view->bytes, view->num_elements()};
  }

 private:
  const loader::SafetensorsModel& files_;
};

// Generates each tensor on first request; the storage moves into the model afterwards.
class DummySource final : public LlamaModel::TensorSource {
 public:
  explicit DummySource(uint64_t seed) : seed_(seed) {}
  Result<HostTensor> get(const WeightSpec& spec) override {
    int64_t n = 1;
    for (int64_t d : spec.shape) n *= d;
    auto& data = storage.emplace_back(static_cast<size_t>(n));
    fill_dummy_bf16(spec, seed_, 0, data);
    return HostTensor{GgmlType::kBF16, std::as_bytes(std::span<const uint16_t>(data)), n};
  }
  std::vector<std::vector<uint16_t>> storage;

 private:
  uint64_t seed_;
};

}  // namespace

Result<std::unique_ptr<LlamaModel>> LlamaModel::from_gguf(const loader::GgufFile& file, engine::Backend& backend,
                                                          const LlamaLoadOptions& options) {
  Result<ModelConfig> config = config_from_gguf(file);
  if (!config) return config.status();
  // llama.cpp's converter permutes q/k rows of llama-type models so rotation pairs are
  // adjacent; Qwen2 files keep Hugging Face's halves layout (llama.cpp's NeoX mode).
  const engine::RopeStyle style =
      config->family == ModelFamily::kQwen2 ? engine::RopeStyle::kHalf : engine::RopeStyle::kInterleaved;
  std::vector<float> divisors;
  if (const loader::GgufTensorInfo* freqs = file.find_tensor("rope_freqs.weight")) {
    divisors.resize(static_cast<size_t>(freqs->num_elements));
    TESSERA_RETURN_IF_ERROR(file.dequantize_tensor(*freqs, divisors));
    if (static_cast<int64_t>(divisors.size()) != config->head_dim / 2) {
      return invalid_argument("rope_freqs.weight has " + std::to_string(divisors.size()) + " entries, expected " +
                              std::to_string(config->head_dim / 2));
    }
  }
  GgufSource source(file);
  return load(*config, source, style, divisors, backend, options);
}

Result<std::unique_ptr<LlamaModel>> LlamaModel::from_safetensors(const loader::SafetensorsModel& files,
                                                                 const ModelConfig& config, engine::Backend& backend,
                                                                 const LlamaLoadOptions& options) {
  SafetensorsSource source(files);
  return load(config, source, engine::RopeStyle::kHalf, {}, backend, options);
}

Result<std::unique_ptr<LlamaModel>> LlamaModel::from_dummy(const ModelConfig& config, uint64_t seed,
                                                           engine::Backend& backend, const LlamaLoadOptions& options) {
  DummySource source(seed);
  auto model = load(config, source, engine::RopeStyle::kHalf, {}, backend, options);
  if (model) {
    for (auto& data : source.storage) (*model)->owned_bf16_.push_back(std::move(data));
  }
  return model;
}

Result<std::unique_ptr<LlamaModel>> LlamaModel::load(const ModelConfig& config, TensorSource& source,
                                                     engine::RopeStyle rope_style,
                                                     std::span<const float> rope_freq_divisors,
                                                     engine::Backend& backend, const LlamaLoadOptions& options) {
  TESSERA_RETURN_IF_ERROR(options.validate());
  TESSERA_RETURN_IF_ERROR(config.validate());
  std::unique_ptr<LlamaModel> model(new LlamaModel(backend, config, options));
  const ModelConfig& c = model->config_;
  model->rope_style_ = rope_style;

  // Specs by their GGUF-style name, the key the code below uses whatever the source.
  std::unordered_map<std::string, WeightSpec> specs;
  for (WeightSpec& spec : weight_specs(c)) specs.emplace(spec.gguf_name, std::move(spec));
  auto fetch = [&](const std::string& name) -> Result<HostTensor> { return source.get(specs.at(name)); };

  {
    // Matrices (and the embedding table) in upload order, so a device backend can place them in one arena.
    int64_t elements = 0, tensors = 0;
    for (const auto& [name, spec] : specs) {
      if (spec.shape.size() != 2) continue;
      elements += spec.shape[0] * spec.shape[1];
      ++tensors;
    }
    backend.expect_weights(elements, tensors);
  }
  const int64_t act_bytes = engine::act_type_bytes(backend.activation_type());
  auto load_vector = [&](const std::string& name) -> Result<engine::Act> {
    auto t = fetch(name);
    if (!t) return t.status();
    std::vector<float> host(static_cast<size_t>(t->num_elements));
    Status s = kc::dequantize({t->type, t->bytes, host});
    if (!s.is_ok()) return s.with_context("tensor " + name);
    auto dst = backend.allocate_activations(t->num_elements, name);
    if (!dst) return dst.status();
    TESSERA_RETURN_IF_ERROR(backend.upload_floats(host, *dst));
    model->weight_bytes_ += t->num_elements * act_bytes;
    return *dst;
  };
  auto load_matrix = [&](const std::string& name) -> Result<WeightTensor> {
    auto t = fetch(name);
    if (!t) return t.status();
    const WeightSpec& spec = specs.at(name);
    const int64_t n = spec.shape[0];
    const int64_t k = spec.shape[1];
    const bool native = options.weight_mode == WeightMode::kNative && kc::matmul_supported(t->type) &&
                        k % kc::matmul_k_multiple(t->type) == 0;
    Result<WeightTensor> w = internal_error("unset");
    if (native) {
      w = backend.upload_weight(t->type, t->bytes, n, k);
    } else {
      auto& owned = model->owned_weights_.emplace_back(static_cast<size_t>(t->num_elements));
      Status s = kc::dequantize({t->type, t->bytes, owned});
      if (!s.is_ok()) return s.with_context("tensor " + name);
      w = backend.upload_weight(kc::GgmlType::kF32, std::as_bytes(std::span<const float>(owned)), n, k);
    }
    if (!w) return w.status().with_context("tensor " + name);
    if (w->data != model->embedding_.data) model->weight_bytes_ += w->bytes;  // a tied lm_head is the table
    return w;
  };
#define TESSERA_ASSIGN(lhs, expr) \
  do {                            \
    auto _r = (expr);             \
    if (!_r) return _r.status();  \
    lhs = *_r;                    \
  } while (0)

  // The embedding table is only gathered from, never multiplied: keep it as stored.
  {
    auto t = fetch("token_embd.weight");
    if (!t) return t.status();
    if (!kc::ggml_type_traits(t->type) || !kc::ggml_type_traits(t->type)->can_dequantize) {
      return unimplemented("token_embd.weight: no kernel for type " + std::string(kc::ggml_type_name(t->type)));
    }
    auto table = backend.upload_weight(t->type, t->bytes, c.vocab_size, c.hidden_size);
    if (!table) return table.status().with_context("tensor token_embd.weight");
    model->embedding_ = *table;
    model->weight_bytes_ += table->bytes;
  }
  TESSERA_ASSIGN(model->lm_head_, load_matrix(c.tie_word_embeddings ? "token_embd.weight" : "output.weight"));
  TESSERA_ASSIGN(model->final_norm_, load_vector("output_norm.weight"));
  model->layers_.resize(c.num_layers);
  for (uint32_t i = 0; i < c.num_layers; ++i) {
    const std::string p = "blk." + std::to_string(i) + ".";
    Layer& l = model->layers_[i];
    TESSERA_ASSIGN(l.attn_norm, load_vector(p + "attn_norm.weight"));
    TESSERA_ASSIGN(l.ffn_norm, load_vector(p + "ffn_norm.weight"));
    TESSERA_ASSIGN(l.wq, load_matrix(p + "attn_q.weight"));
    TESSERA_ASSIGN(l.wk, load_matrix(p + "attn_k.weight"));
    TESSERA_ASSIGN(l.wv, load_matrix(p + "attn_v.weight"));
    TESSERA_ASSIGN(l.wo, load_matrix(p + "attn_output.weight"));
    TESSERA_ASSIGN(l.w_gate, load_matrix(p + "ffn_gate.weight"));
    TESSERA_ASSIGN(l.w_up, load_matrix(p + "ffn_up.weight"));
    TESSERA_ASSIGN(l.w_down, load_matrix(p + "ffn_down.weight"));
    if (c.attention_bias) {
      TESSERA_ASSIGN(l.bq, load_vector(p + "attn_q.bias"));
      TESSERA_ASSIGN(l.bk, load_vector(p + "attn_k.bias"));
      TESSERA_ASSIGN(l.bv, load_vector(p + "attn_v.bias"));
    }
  }
#undef TESSERA_ASSIGN
  model->inv_freq_ = rope_inv_freq(c, rope_freq_divisors);
  TESSERA_RETURN_IF_ERROR(model->allocate_activations());
  return model;
}

Status LlamaModel::allocate_activations() {
  const ModelConfig& c = config_;
  const int64_t t = options_.max_batch_tokens;
  const int64_t q_dim = static_cast<int64_t>(c.num_attention_heads) * c.head_dim;
  const int64_t kv_dim = static_cast<int64_t>(c.num_kv_heads) * c.head_dim;
  struct Want {
    engine::Act* ptr;
    int64_t count;
    const char* name;
  };
  const Want wants[] = {
      {&x_, t * c.hidden_size, "hidden states"},
      {&h_, t * c.hidden_size, "normed states"},
      {&qkv_, t * (q_dim + 2 * kv_dim), "q/k/v"},
      {&attn_, t * q_dim, "attention output"},
      {&gate_up_, t * 2 * static_cast<int64_t>(c.intermediate_size), "gate/up"},
      {&act_, t * c.intermediate_size, "mlp activation"},
      {&sample_hidden_, options_.max_sample_rows * c.hidden_size, "sampled hidden states"},
      {&logits_, options_.max_sample_rows * c.vocab_size, "logits"},
  };
  for (const Want& w : wants) {
    auto buffer = backend_.allocate_activations(w.count, w.name);
    if (!buffer) return buffer.status();
    *w.ptr = *buffer;
  }
  return Status::ok();
}

Status LlamaModel::forward(const engine::StepLayout& layout) {
  const std::span<const int32_t> sample_rows = layout.sample_rows;
  const ModelConfig& c = config_;
  const int64_t n = layout.num_tokens();
  if (n < 1 || n > options_.max_batch_tokens) {
    return invalid_argument("step has " + std::to_string(n) + " tokens; the engine runs 1.." +
                            std::to_string(options_.max_batch_tokens));
  }
  if (static_cast<int64_t>(sample_rows.size()) > options_.max_sample_rows) {
    return invalid_argument("step samples " + std::to_string(sample_rows.size()) + " rows; at most " +
                            std::to_string(options_.max_sample_rows));
  }
  const int64_t hidden = c.hidden_size;
  const int64_t inter = c.intermediate_size;
  const int64_t nh = c.num_attention_heads;
  const int64_t nkv = c.num_kv_heads;
  const int64_t hd = c.head_dim;
  const float eps = static_cast<float>(c.rms_norm_eps);
  const float attn_scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const float residual_scale = static_cast<float>(c.residual_scale);
  engine::Backend& be = backend_;

  const int64_t q_dim = nh * hd;
  const int64_t kv_dim = nkv * hd;
  const int64_t qkv_dim = q_dim + 2 * kv_dim;
  const int64_t num_layers = static_cast<int64_t>(layers_.size());
  // Each sub-layer reads its norm of the residual stream x_ (a backend may fold the norm
  // into the projection that reads it) and adds its output projection to x_.
  TESSERA_RETURN_IF_ERROR(be.embed(embedding_, static_cast<float>(c.embedding_scale), x_));
  for (int64_t li = 0; li < num_layers; ++li) {
    const Layer& l = layers_[static_cast<size_t>(li)];
    const MatmulTarget qkv[] = {{&l.wq, qkv_, qkv_dim, l.bq},
                                {&l.wk, qkv_ + q_dim, qkv_dim, l.bk},
                                {&l.wv, qkv_ + q_dim + kv_dim, qkv_dim, l.bv}};
    TESSERA_RETURN_IF_ERROR(be.normed_matmul(x_, {l.attn_norm, eps, h_}, n, hidden, qkv));
    engine::AttentionOp attention;
    attention.layer = li;
    attention.q = qkv_;
    attention.k = qkv_ + q_dim;
    attention.v = qkv_ + q_dim + kv_dim;
    attention.row_stride = qkv_dim;
    attention.num_heads = nh;
    attention.num_kv_heads = nkv;
    attention.head_dim = hd;
    attention.inv_freq = inv_freq_;
    attention.rope_style = rope_style_;
    attention.scale = attn_scale;
    attention.sliding_window = c.sliding_window;
    attention.out = attn_;
    TESSERA_RETURN_IF_ERROR(be.attention(attention));
    TESSERA_RETURN_IF_ERROR(be.matmul_add(attn_, n, q_dim, l.wo, x_, residual_scale, h_));
    TESSERA_RETURN_IF_ERROR(be.gate_up_silu(x_, {l.ffn_norm, eps, h_}, n, hidden, l.w_gate, l.w_up, gate_up_, act_));
    TESSERA_RETURN_IF_ERROR(be.matmul_add(act_, n, inter, l.w_down, x_, residual_scale, h_));
  }
  if (sample_rows.empty()) return Status::ok();
  const int64_t s = static_cast<int64_t>(sample_rows.size());
  const MatmulTarget head[] = {{&lm_head_, logits_, 0, {}}};
  // The sampled rows of x_; when every row samples, in order (decode steps), x_ itself.
  bool every_row = s == n;
  for (int64_t r = 0; every_row && r < s; ++r) every_row = sample_rows[static_cast<size_t>(r)] == r;
  engine::Act rows = x_;
  if (!every_row) {
    TESSERA_RETURN_IF_ERROR(be.gather_rows(x_, sample_rows, hidden, h_));
    rows = h_;
  }
  // The final norm goes into lm_head's input (a backend may fold it into the projection).
  if (c.logit_scale == 1.0) return be.normed_matmul(rows, {final_norm_, eps, sample_hidden_}, s, hidden, head);
  TESSERA_RETURN_IF_ERROR(be.rms_norm(rows, final_norm_, eps, sample_hidden_, s, hidden));
  // MiniCPM scales the final hidden state before lm_head: x += (scale - 1) * x.
  TESSERA_RETURN_IF_ERROR(be.add(sample_hidden_, sample_hidden_, s * hidden, static_cast<float>(c.logit_scale) - 1));
  return be.matmul(sample_hidden_, s, hidden, head);
}

}  // namespace tessera::models
