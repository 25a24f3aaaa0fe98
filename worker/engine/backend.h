// The small interface a model definition is written against (DESIGN.md, "Inside the
// worker"): a model calls these operations in order, a backend runs them on its device.
// CpuBackend (cpu_backend.h) runs them with kernels/cpu on float32 activations;
// CudaBackend (cuda_backend.h) with kernels/cuda on bfloat16 activations, enqueued on
// one stream.
//
// Activations, norm weights and biases live in memory the backend handed out
// (allocate_activations) and are addressed by Act, whose arithmetic counts elements of the
// backend's activation type: a model takes row slices without knowing that type. Weights
// are WeightTensors made by upload_weight. A backend is used by one thread (the engine's
// step thread).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kernels/cpu/float_ops.h"
#include "kernels/cpu/ggml_types.h"
#include "kernels/cuda/sampling_params.h"
#include "tessera/common/status.h"

namespace tessera::engine {

using kernels::cpu::GgmlType;
using kernels::cpu::RopeStyle;
// A row to sample on the device and a logit edit (sampler.h's device_row() makes them).
using DeviceSamplingRow = kernels::cuda::SamplingRowParams;
using LogitEdit = kernels::cuda::LogitEdit;

// Element type of the KV cache: 16-bit by default (half the memory traffic of attention;
// fp16 on the CPU, bf16 on CUDA), float32 for the CPU reference path.
enum class KvDtype { kF32, kF16, kBF16 };
inline int64_t kv_dtype_bytes(KvDtype dtype) { return dtype == KvDtype::kF32 ? 4 : 2; }
inline std::string_view kv_dtype_name(KvDtype dtype) {
  return dtype == KvDtype::kF32 ? "f32" : dtype == KvDtype::kF16 ? "f16" : "bf16";
}

enum class ActType { kF32, kBF16 };
inline int64_t act_type_bytes(ActType type) { return type == ActType::kF32 ? 4 : 2; }

// A pointer into a backend's activation memory (host or device).
class Act {
 public:
  Act() = default;
  Act(void* data, ActType type) : data_(static_cast<std::byte*>(data)), type_(type) {}
  Act operator+(int64_t elements) const { return {data_ + elements * act_type_bytes(type_), type_}; }
  template <class T>
  T* as() const {
    return reinterpret_cast<T*>(data_);
  }
  std::byte* data() const { return data_; }
  ActType type() const { return type_; }
  explicit operator bool() const { return data_ != nullptr; }
  bool operator==(const Act&) const = default;

 private:
  std::byte* data_ = nullptr;
  ActType type_ = ActType::kF32;
};

// A weight matrix [n, k] (n output features) in a GGML type, in backend memory.
struct WeightTensor {
  GgmlType type = GgmlType::kF32;
  const std::byte* data = nullptr;
  int64_t n = 0;
  int64_t k = 0;
  int64_t bytes = 0;
};

struct KvShape {
  int64_t num_layers = 0;
  int64_t num_pages = 0;
  int64_t page_size = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  KvDtype dtype = KvDtype::kF16;
  int64_t element_bytes() const { return kv_dtype_bytes(dtype); }
  int64_t page_bytes() const { return 2 * num_layers * page_size * num_kv_heads * head_dim * element_bytes(); }
  int64_t bytes() const { return num_pages * page_bytes(); }
};

// One sequence's part of a step, in host memory; the backend copies what its device needs.
struct StepSequence {
  int64_t token_begin = 0;    // first row of this sequence in the step's activations
  int64_t num_tokens = 0;
  int64_t start_position = 0;
  std::span<const int32_t> page_table;
};

// Everything about a step's batch that does not change between layers.
struct StepLayout {
  std::span<const int32_t> token_ids;   // [num_tokens]
  std::span<const int32_t> positions;   // [num_tokens]
  std::span<const int64_t> kv_slots;    // [num_tokens] page * page_size + offset
  std::span<const StepSequence> sequences;
  std::span<const int32_t> sample_rows;  // rows whose logits the step produces, in order
  int64_t num_tokens() const { return static_cast<int64_t>(token_ids.size()); }
  // Every sequence computes one token (a decode-only step).
  bool decode_only() const { return num_tokens() == static_cast<int64_t>(sequences.size()); }
};

struct MatmulTarget {
  const WeightTensor* weight = nullptr;
  Act y;
  int64_t y_stride = 0;  // 0: weight->n
  Act bias;              // [weight->n] or null
};

// A projection's input normalized row by row first: rms_norm(x) * weight (the norm of a
// sub-layer, applied to the residual stream).
struct RowNorm {
  Act weight;  // [k]
  float eps = 0.0f;
  Act scratch;  // [m, k]: the normalized rows, where a backend does not fuse the norm
};

// One layer's attention: rotate q and k (RoPE at the step's positions), store k and v of
// every step token into the cache of `layer`, then attend every step token to its
// sequence's cached context (causal). q, k and v are [tokens, heads * head_dim] slices
// with one row stride (they may share rows of one buffer); out is [tokens, num_heads *
// head_dim], contiguous. q is rotated in place.
struct AttentionOp {
  int64_t layer = 0;
  Act q, k, v;
  int64_t row_stride = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  std::span<const float> inv_freq;  // [head_dim / 2], rope scaling baked in
  RopeStyle rope_style = RopeStyle::kHalf;
  float scale = 1.0f;
  int64_t sliding_window = 0;  // > 0: attend to the last sliding_window positions only
  Act out;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  virtual ActType activation_type() const = 0;

  // ---- memory ----
  // Makes host bytes usable as a weight. The host bytes stay valid for the backend's
  // lifetime (a mapped file or a buffer the model owns), so the CPU backend borrows them;
  // a device backend copies (and converts) them. Uploading the same host bytes twice
  // (tied embeddings) may return the same tensor.
  [[nodiscard]] virtual Result<WeightTensor> upload_weight(GgmlType type, std::span<const std::byte> host, int64_t n,
                                                           int64_t k) = 0;
  // How many weight elements the model will upload, before the first upload_weight: a
  // device backend may place them in one arena (adjacent uploads are then adjacent in
  // memory, and matmul can run several targets as one GEMM).
  virtual void expect_weights(int64_t /*num_elements*/, int64_t /*num_tensors*/) {}
  // Bytes left for the KV cache under the backend's memory budget, once weights and
  // activations are allocated; 0 when the backend has no budget (the engine's options
  // size the cache).
  virtual int64_t kv_budget_bytes() const { return 0; }
  // An activation buffer of `count` elements, owned by the backend until it is destroyed.
  [[nodiscard]] virtual Result<Act> allocate_activations(int64_t count, std::string_view what) = 0;
  // Copies host floats into backend memory (small: norms, biases), converting them.
  [[nodiscard]] virtual Status upload_floats(std::span<const float> host, Act dst) = 0;
  // The paged KV cache, allocated once.
  [[nodiscard]] virtual Status allocate_kv(const KvShape& shape) = 0;
  // Copies whole pages (copy-on-write of a shared prefix page).
  [[nodiscard]] virtual Status copy_kv_pages(std::span<const std::pair<int32_t, int32_t>> src_dst) = 0;

  // ---- a step ----
  [[nodiscard]] virtual Status begin_step(const StepLayout& layout) = 0;
  // out[t] = table row token_ids[t] * scale.
  [[nodiscard]] virtual Status embed(const WeightTensor& table, float scale, Act out) = 0;
  [[nodiscard]] virtual Status rms_norm(Act x, Act weight, float eps, Act out, int64_t rows, int64_t width) = 0;
  // Every target reads the same x [m, k].
  [[nodiscard]] virtual Status matmul(Act x, int64_t m, int64_t k, std::span<const MatmulTarget> targets) = 0;
  // matmul of the normalized rows rms_norm(x) * norm.weight. A backend may fuse the norm
  // into the projection; otherwise the normalized rows go to norm.scratch first.
  [[nodiscard]] virtual Status normed_matmul(Act x, const RowNorm& norm, int64_t m, int64_t k,
                                             std::span<const MatmulTarget> targets) {
    TESSERA_RETURN_IF_ERROR(rms_norm(x, norm.weight, norm.eps, norm.scratch, m, k));
    return matmul(norm.scratch, m, k, targets);
  }
  // residual [m, w.n] += scale * x·wᵀ: a sub-layer's output projection added to the
  // residual stream. A backend may fold the add into the projection; otherwise the
  // projection goes to scratch [m, w.n] first.
  [[nodiscard]] virtual Status matmul_add(Act x, int64_t m, int64_t k, const WeightTensor& w, Act residual,
                                          float scale, Act scratch) {
    const MatmulTarget target[] = {{&w, scratch, 0, {}}};
    TESSERA_RETURN_IF_ERROR(matmul(x, m, k, target));
    return add(residual, scratch, m * w.n, scale);
  }
  [[nodiscard]] virtual Status attention(const AttentionOp& op) = 0;
  // act [m, gate.n] = silu(x'·gateᵀ) * (x'·upᵀ), the MLP's first half, where x' is
  // rms_norm(x) * norm.weight; gate_up [m, 2 * gate.n] is scratch for the two projections
  // (gate then up in each row). A backend may fuse it.
  [[nodiscard]] virtual Status gate_up_silu(Act x, const RowNorm& norm, int64_t m, int64_t k,
                                            const WeightTensor& gate, const WeightTensor& up, Act gate_up, Act act) {
    const int64_t width = gate.n;
    const MatmulTarget targets[] = {{&gate, gate_up, 2 * width, {}}, {&up, gate_up + width, 2 * width, {}}};
    TESSERA_RETURN_IF_ERROR(normed_matmul(x, norm, m, k, targets));
    return silu_mul(gate_up, act, m, width);
  }
  // out = silu(gate) * up, where each row of gate_up [rows, 2 * width] holds gate then up.
  [[nodiscard]] virtual Status silu_mul(Act gate_up, Act out, int64_t rows, int64_t width) = 0;
  // x += scale * y over count elements.
  [[nodiscard]] virtual Status add(Act x, Act y, int64_t count, float scale) = 0;
  // dst[i] = src[rows[i]] for rows of `width` elements.
  [[nodiscard]] virtual Status gather_rows(Act src, std::span<const int32_t> rows, int64_t width, Act dst) = 0;
  // Copies count elements from backend memory to host floats (logits), waiting for the step.
  [[nodiscard]] virtual Status download(Act src, int64_t count, std::span<float> dst) = 0;
  // The index of each row's largest logit (lowest index among equal maxima; NaN never
  // wins; -1 for a row without a usable logit), waiting for the step: greedy sampling without moving the logits. Only backends
  // where that saves a copy implement it (device_argmax() true).
  virtual bool device_argmax() const { return false; }
  [[nodiscard]] virtual Status argmax(Act /*logits*/, int64_t /*rows*/, int64_t /*vocab*/,
                                      std::span<int32_t> /*out*/) {
    return unimplemented(name() + ": no device argmax");
  }
  // Samples each row of logits [rows.size(), vocab] as SequenceSampler::sample() would
  // (without logprobs), waiting for the step; out[i] is -1 where a row has no usable
  // logit. Only backends where that saves moving the logits implement it.
  virtual bool device_sampling() const { return false; }
  [[nodiscard]] virtual Status sample(Act /*logits*/, int64_t /*vocab*/, std::span<const DeviceSamplingRow> /*rows*/,
                                      std::span<const LogitEdit> /*edits*/, std::span<int32_t> /*out*/) {
    return unimplemented(name() + ": no device sampling");
  }
};

}  // namespace tessera::engine
