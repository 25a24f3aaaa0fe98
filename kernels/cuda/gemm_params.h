// Parameters of the GEMMs (kernels/cuda/gemm.h), apart from Status so that the CUDA
// translation unit of the skinny-GEMM kernel sees them too.
#pragma once

#include <cstdint>

#include "kernels/cuda/layer_ops_params.h"

namespace tessera::kernels::cuda {

struct GemmParams {
  const Bf16* a = nullptr;  // [m, k] activations
  const Bf16* w = nullptr;  // [n, k] weight
  Bf16* c = nullptr;        // [m, n]
  int64_t m = 0;
  int64_t n = 0;
  int64_t k = 0;
  bool accumulate = false;  // C += A·Wᵀ (a residual add folded into the projection)
  int64_t ldc = 0;          // elements between rows of C; 0: n (C may be a column slice)
  // The MLP's first half for one row: W is [2n, k], the gate rows then the up rows, and
  // C[j] = silu(gate_j) * up_j, each rounded to bf16 where the unfused path rounds (the
  // two projections, silu, the product). Only m = 1 (the GEMV) takes it.
  bool gate_up_silu = false;
  // When set, A's row is RMS-normalized first, as rms_norm() does (without a residual):
  // a = round_bf16(a / sqrt(mean(a²) + norm_eps)) * norm_weight, rounded to bf16. Only
  // the GEMV takes it, fused into its staging of the row.
  const Bf16* norm_weight = nullptr;  // [k]
  float norm_eps = 0.0f;
};

namespace launch {
// C = A·Wᵀ for one activation row by streaming W once: one warp per output column, 16-byte
// loads, the activation row staged in shared memory. Needs k % 8 == 0, k <= kGemvMaxK and
// 16-byte aligned A, W (and norm weight). Measured on the H100 against cuBLASLt at
// Llama-3-8B's projections: faster at m = 1 (65-92% of the copy rate against 56-87%),
// slower already at m = 8, so only m = 1 comes here.
inline constexpr int64_t kGemvMaxRows = 1;
inline constexpr int64_t kGemvMaxK = 48 * 1024;
// Whether the GEMV takes C = A·Wᵀ (else cuBLASLt does); null pointers count as aligned.
inline bool gemv_fits(int64_t m, int64_t k, const void* a, const void* w, const void* norm_weight = nullptr) {
  const uintptr_t addresses =
      reinterpret_cast<uintptr_t>(a) | reinterpret_cast<uintptr_t>(w) | reinterpret_cast<uintptr_t>(norm_weight);
  return m <= kGemvMaxRows && k % 8 == 0 && k <= kGemvMaxK && addresses % 16 == 0;
}
const char* gemv(const GemmParams& p, Stream stream);
}  // namespace launch

}  // namespace tessera::kernels::cuda
