// The parameter structs of kernels/cuda/layer_ops.h, apart from Status, so that the CUDA
// translation units (whose compiler front end cannot read status.h) see them too.
#pragma once

#include <cstdint>

struct CUstream_st;

namespace tessera::kernels::cuda {

using Stream = CUstream_st*;  // a cudaStream_t; nullptr is the default stream
using Bf16 = uint16_t;        // the bits of one bfloat16 value

// out[t] = table[token_ids[t]]. Ids must be in [0, vocab): the router refuses others before
// they reach a worker, and the kernel does not check them again.
struct EmbeddingParams {
  const Bf16* table = nullptr;        // [vocab, width]
  const int32_t* token_ids = nullptr;  // [num_tokens], device memory
  Bf16* out = nullptr;                 // [num_tokens, width]
  int64_t num_tokens = 0;
  int64_t width = 0;
};

// With a residual: residual += x (rounded to bf16, as the layer's bf16 add is), then
// out = rms_norm(residual) * weight. Without: out = rms_norm(x) * weight. rms_norm(v) =
// v / sqrt(mean(v²) + eps), rounded to bf16 before the weight multiplies it (HF's order).
// out may alias x.
struct RmsNormParams {
  const Bf16* x = nullptr;      // [rows, width]
  Bf16* residual = nullptr;     // [rows, width] or nullptr
  const Bf16* weight = nullptr;  // [width]
  Bf16* out = nullptr;          // [rows, width]
  int64_t rows = 0;
  int64_t width = 0;
  float eps = 1e-5f;
};

// out = silu(gate) * up, where each row of gate_up holds gate then up (the merged
// gate/up projection). silu(gate) is rounded to bf16 before the product, as HF's is.
struct SiluMulParams {
  const Bf16* gate_up = nullptr;  // [rows, 2 * width]
  Bf16* out = nullptr;            // [rows, width]
  int64_t rows = 0;
  int64_t width = 0;
};

enum class RopeStyle {
  kInterleaved,  // rotates pairs (x[2i], x[2i+1]): llama.cpp's layout of llama GGUF files
  kHalf,         // rotates (x[i], x[i + d/2]): Hugging Face's rotate_half (NeoX)
};

// Rotates q in place and k on its way into the cache, and writes v into the cache: token t
// goes to slot slots[t] = page * page_size + offset of both caches, whose layout is
// [num_pages, page_size, num_kv_heads, head_dim], that is [num_slots, num_kv_heads, head_dim].
// The angle of pair i at position p is p * inv_freq[i]; the caller bakes any rope scaling
// (linear, llama3) into inv_freq.
struct RopeKvParams {
  Bf16* q = nullptr;        // [num_tokens, q_stride], heads of head_dim in each row
  const Bf16* k = nullptr;  // [num_tokens, k_stride]
  const Bf16* v = nullptr;  // [num_tokens, v_stride]
  int64_t q_stride = 0;     // row strides in elements: q, k and v may be slices of one buffer
  int64_t k_stride = 0;
  int64_t v_stride = 0;
  const int32_t* positions = nullptr;  // [num_tokens]
  const int64_t* slots = nullptr;      // [num_tokens]
  const float* inv_freq = nullptr;     // [head_dim / 2]
  Bf16* k_cache = nullptr;             // [num_slots, num_kv_heads, head_dim]
  Bf16* v_cache = nullptr;
  int64_t num_tokens = 0;
  int64_t num_q_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  RopeStyle style = RopeStyle::kHalf;
};

// x += scale * y over count elements, rounded to bf16 (a scaled residual add).
struct AddParams {
  Bf16* x = nullptr;
  const Bf16* y = nullptr;  // may be x
  int64_t count = 0;
  float scale = 1.0f;
};

// dst[i] = src[rows[i]]: the rows of a step that sample, gathered before the last norm.
struct GatherRowsParams {
  const Bf16* src = nullptr;       // [*, width]
  const int32_t* rows = nullptr;   // [num_rows], device memory
  Bf16* dst = nullptr;             // [num_rows, width]
  int64_t num_rows = 0;
  int64_t width = 0;
};

// y[r, j] += bias[j] for j < n: a projection's bias, where y rows have stride y_stride.
struct AddBiasParams {
  Bf16* y = nullptr;
  int64_t y_stride = 0;
  const Bf16* bias = nullptr;  // [n]
  int64_t rows = 0;
  int64_t n = 0;
};

// Launchers (layer_ops.cu): enqueue on `stream`, return nullptr or the CUDA error's text.
// Parameters are checked by the Status-returning functions of layer_ops.h first.
namespace launch {
const char* embedding(const EmbeddingParams& p, Stream stream);
const char* rms_norm(const RmsNormParams& p, Stream stream);
const char* silu_mul(const SiluMulParams& p, Stream stream);
const char* rope_and_cache_kv(const RopeKvParams& p, Stream stream);
const char* add(const AddParams& p, Stream stream);
const char* gather_rows(const GatherRowsParams& p, Stream stream);
const char* add_bias(const AddBiasParams& p, Stream stream);
}  // namespace launch

}  // namespace tessera::kernels::cuda
