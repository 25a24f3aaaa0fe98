// The small interface a model definition is written against (DESIGN.md, "Inside the
// worker"): a model calls these operations in order, a backend runs them on its device.
// CpuBackend (cpu_backend.h) runs them with kernels/cpu; a CUDA backend plugs in the same
// way with device pointers and a stream.
//
// Pointers in the op structs point into memory the backend handed out (allocate_floats,
// kv_layer, upload_weight); activations are float32, row-major [tokens, width].
// A backend is used by one thread (the engine's step thread).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/float_ops.h"
#include "kernels/cpu/ggml_types.h"
#include "tessera/common/status.h"

namespace tessera::engine {

using kernels::cpu::GgmlType;
// Element type of the KV cache: half by default (half the memory traffic of attention),
// float32 for the reference path.
using kernels::cpu::KvDtype;
using kernels::cpu::RopeStyle;

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
  int64_t element_bytes() const { return kernels::cpu::kv_dtype_bytes(dtype); }
  int64_t bytes() const { return 2 * num_layers * num_pages * page_size * num_kv_heads * head_dim * element_bytes(); }
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
  int64_t num_tokens() const { return static_cast<int64_t>(token_ids.size()); }
};

struct MatmulTarget {
  const WeightTensor* weight = nullptr;
  float* y = nullptr;
  int64_t y_stride = 0;         // 0: weight->n
  const float* bias = nullptr;  // [weight->n] or null
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;

  // ---- memory ----
  // Makes host bytes usable as a weight. The host bytes stay valid for the backend's
  // lifetime (a mapped file or a buffer the model owns), so the CPU backend borrows them.
  [[nodiscard]] virtual Result<WeightTensor> upload_weight(GgmlType type, std::span<const std::byte> host, int64_t n,
                                                           int64_t k) = 0;
  // A float buffer in backend memory, owned by the backend until it is destroyed.
  [[nodiscard]] virtual Result<float*> allocate_floats(int64_t count, std::string_view what) = 0;
  // Copies host floats into backend memory (small: norms, biases).
  [[nodiscard]] virtual Status upload_floats(std::span<const float> host, float* dst) = 0;
  // The paged KV cache, allocated once.
  [[nodiscard]] virtual Status allocate_kv(const KvShape& shape) = 0;
  // Copies whole pages (copy-on-write of a shared prefix page).
  [[nodiscard]] virtual Status copy_kv_pages(std::span<const std::pair<int32_t, int32_t>> src_dst) = 0;

  // ---- a step ----
  [[nodiscard]] virtual Status begin_step(const StepLayout& layout) = 0;
  // out[t] = table row token_ids[t] * scale.
  [[nodiscard]] virtual Status embed(const WeightTensor& table, float scale, float* out) = 0;
  [[nodiscard]] virtual Status rms_norm(const float* x, const float* weight, float eps, float* out, int64_t rows,
                                        int64_t width) = 0;
  // Every target reads the same x [m, k].
  [[nodiscard]] virtual Status matmul(const float* x, int64_t m, int64_t k, std::span<const MatmulTarget> targets) = 0;
  // Rotates q [tokens, num_heads*head_dim] and k [tokens, num_kv_heads*head_dim] for the
  // step's positions with per-dimension inverse frequencies.
  [[nodiscard]] virtual Status rope(float* q, int64_t num_heads, float* k, int64_t num_kv_heads, int64_t head_dim,
                                    std::span<const float> inv_freq, RopeStyle style) = 0;
  // Stores this step's k/v of `layer` into the cache, then attends every step token to its
  // sequence's cached context: out [tokens, num_heads*head_dim].
  [[nodiscard]] virtual Status attention(int64_t layer, const float* q, const float* k, const float* v,
                                         int64_t num_heads, float scale, int64_t sliding_window, float* out) = 0;
  [[nodiscard]] virtual Status silu_mul(const float* gate, const float* up, int64_t in_stride, float* out,
                                        int64_t rows, int64_t width) = 0;
  // x += scale * y over count elements.
  [[nodiscard]] virtual Status add(float* x, const float* y, int64_t count, float scale) = 0;
  // dst[i] = src[rows[i]] for rows of `width` floats.
  [[nodiscard]] virtual Status gather_rows(const float* src, std::span<const int32_t> rows, int64_t width,
                                           float* dst) = 0;
  // Copies count floats from backend memory to the host (logits), waiting for the step.
  [[nodiscard]] virtual Status download(const float* src, int64_t count, std::span<float> dst) = 0;
};

}  // namespace tessera::engine
