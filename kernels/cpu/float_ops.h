// Element-wise and row-wise float32 kernels of a transformer layer: RMSNorm, rotary
// position embedding, SiLU·mul, residual add and embedding lookup. Shapes are row-major
// [rows, width] with an explicit row stride where a caller may pass a slice.
// Rows are split over the calling thread's OpenMP team when the work is large enough.
#pragma once

#include <cstdint>
#include <span>

#include "kernels/cpu/ggml_types.h"
#include "tessera/common/status.h"

namespace tessera::kernels::cpu {

// out[r] = x[r] / sqrt(mean(x[r]²) + eps) * weight, in the order Hugging Face's
// LlamaRMSNorm rounds (normalize, then scale). out may alias x.
struct RmsNormParams {
  const float* x = nullptr;  // [rows, width]
  int64_t x_stride = 0;
  const float* weight = nullptr;  // [width]
  float* out = nullptr;  // [rows, width]
  int64_t out_stride = 0;
  int64_t rows = 0;
  int64_t width = 0;
  float eps = 1e-5f;
};
void rms_norm(const RmsNormParams& p);

// x[r] += scale * y[r] over [rows, width] (both contiguous).
void add_scaled(float* x, const float* y, int64_t count, float scale);

// out = silu(gate) * up, element-wise over [rows, width]; gate/up rows have stride in_stride.
void silu_mul(const float* gate, const float* up, int64_t in_stride, float* out, int64_t rows, int64_t width);

enum class RopeStyle {
  kInterleaved,  // rotates pairs (x[2i], x[2i+1]): llama.cpp's layout of llama GGUF files
  kHalf,         // rotates (x[i], x[i + d/2]): Hugging Face's rotate_half, Qwen2 GGUF (NeoX)
};

// cos/sin of position * inv_freq[i] for each token: [num_tokens, head_dim / 2] each.
void rope_tables(std::span<const int32_t> positions, std::span<const float> inv_freq, float* cos_out, float* sin_out);

// Rotates every head of x [num_tokens, num_heads * head_dim] (row stride x_stride) in place.
struct RopeParams {
  float* x = nullptr;
  int64_t x_stride = 0;
  int64_t num_tokens = 0;
  int64_t num_heads = 0;
  int64_t head_dim = 0;
  const float* cos = nullptr;  // [num_tokens, head_dim / 2]
  const float* sin = nullptr;
  RopeStyle style = RopeStyle::kHalf;
};
void apply_rope(const RopeParams& p);

// out[t] = row token_ids[t] of a [vocab, width] table in a GGML type, times scale.
// INVALID_ARGUMENT for an id outside [0, vocab) or a type that cannot be dequantized.
struct EmbeddingParams {
  GgmlType type = GgmlType::kF32;
  std::span<const std::byte> table;
  int64_t vocab = 0;
  int64_t width = 0;
  std::span<const int32_t> token_ids;
  float* out = nullptr;  // [token_ids.size(), width]
  float scale = 1.0f;
};
[[nodiscard]] Status embedding_lookup(const EmbeddingParams& p);

}  // namespace tessera::kernels::cpu
