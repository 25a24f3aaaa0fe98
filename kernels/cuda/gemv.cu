#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "kernels/cuda/bf16.cuh"
#include "kernels/cuda/pdl.cuh"

#include "kernels/cuda/gemm_params.h"

namespace tessera::kernels::cuda {

namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
// Loads in flight per lane and weight row: a short row is otherwise a few dependent round
// trips to memory.
constexpr int kUnroll = 4;

using namespace bf16;

// Weight words [i0 + 32u] of kRows rows (`rows` apart), u < kUnroll, zero past the row.
template <int kRows>
__device__ __forceinline__ void load_weights(const uint4* w, int64_t row_words, int64_t i0, int64_t words,
                                             uint4 (&out)[kRows][kUnroll]) {
  #pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const int64_t i = i0 + 32 * u;
    #pragma unroll
    for (int r = 0; r < kRows; ++r) {
      out[r][u] = i < words ? __ldcs(w + r * row_words + i) : make_uint4(0, 0, 0, 0);  // streamed once
    }
  }
}

// C = A·Wᵀ for one activation row. Warp j streams weight row j (and, for the MLP's fused
// gate/up, row j + n too) once, against the activation row staged in shared memory.
// The first loads of the weight are issued before waiting for the previous kernel (the
// weights are never written by it), so the stream starts under that kernel's tail. With
// a row norm, the block normalizes the activation row as rms_norm_kernel does (the same
// roundings) while staging it: the norm costs no kernel of its own.
template <int kRows>
__global__ void __launch_bounds__(kThreads) gemv_kernel(GemmParams p) {
  extern __shared__ uint4 act[];  // [k / 8]
  const int lane = threadIdx.x & 31;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  const bool active = j < p.n;
  const int64_t words = p.k / 8;
  const uint4* w = reinterpret_cast<const uint4*>(p.w) + (active ? j : 0) * words;
  const int64_t row_words = p.n * words;  // the up row's offset from the gate row
  uint4 wq[kRows][kUnroll];
  if (active) load_weights<kRows>(w, row_words, lane, words, wq);
  pdl_wait();

  const uint4* a = reinterpret_cast<const uint4*>(p.a);
  if (p.norm_weight) {
    float sum_sq = 0.0f;
    for (int64_t i = threadIdx.x; i < words; i += kThreads) {
      const Bf16x8 v = unpack8(a[i]);
      #pragma unroll
      for (int e = 0; e < 8; ++e) sum_sq += v.v[e] * v.v[e];
    }
    const float inv_rms = rsqrtf(block_sum(sum_sq) / static_cast<float>(p.k) + p.norm_eps);
    const uint4* nw = reinterpret_cast<const uint4*>(p.norm_weight);
    for (int64_t i = threadIdx.x; i < words; i += kThreads) act[i] = pack8(rms_scale8(unpack8(a[i]), inv_rms, nw[i]));
  } else {
    for (int64_t i = threadIdx.x; i < words; i += kThreads) act[i] = a[i];
  }
  __syncthreads();
  if (!active) return;

  float acc[kRows] = {};
  for (int64_t i0 = lane; i0 < words; i0 += 32 * kUnroll) {
    #pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = i0 + 32 * u;
      if (i >= words) break;
      const Bf16x8 av = unpack8(act[i]);
      #pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const Bf16x8 wv = unpack8(wq[r][u]);
        #pragma unroll
        for (int e = 0; e < 8; ++e) acc[r] += wv.v[e] * av.v[e];
      }
    }
    if (i0 + 32 * kUnroll < words) load_weights<kRows>(w, row_words, i0 + 32 * kUnroll, words, wq);
  }
  #pragma unroll
  for (int r = 0; r < kRows; ++r) {
    for (int o = 16; o > 0; o >>= 1) acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], o);
  }
  if (lane != 0) return;
  Bf16* c = p.c + j;
  if constexpr (kRows == 2) {
    // silu(gate) · up, rounded where the unfused path rounds (each projection, silu).
    const float g = round_bf16(acc[0]);
    const float u = round_bf16(acc[1]);
    *c = to_bf16(silu_bf16(g) * u);
  } else {
    float v = acc[0];
    if (p.accumulate) v += to_float(*c);
    *c = to_bf16(v);
  }
}

}  // namespace

namespace launch {

const char* gemv(const GemmParams& p, Stream stream) {
  const unsigned blocks = static_cast<unsigned>((p.n + kWarps - 1) / kWarps);
  const size_t shared = static_cast<size_t>(p.k) * sizeof(Bf16);
  auto kernel = p.gate_up_silu ? gemv_kernel<2> : gemv_kernel<1>;
  // Rows longer than 24k elements stage more than the default 48 KiB: allowed once.
  static const cudaError_t allowed = [] {
    const int bytes = static_cast<int>(kGemvMaxK * sizeof(Bf16));
    cudaError_t e = cudaFuncSetAttribute(gemv_kernel<1>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    if (e == cudaSuccess) e = cudaFuncSetAttribute(gemv_kernel<2>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
    return e;
  }();
  cudaError_t e = allowed;
  if (e == cudaSuccess) e = launch_pdl(kernel, blocks, kThreads, shared, stream, p);
  if (e == cudaSuccess) e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

}  // namespace launch

}  // namespace tessera::kernels::cuda
