#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "kernels/cuda/pdl.cuh"

#include "kernels/cuda/gemm_params.h"

namespace tessera::kernels::cuda {

namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
// Loads in flight per lane and weight row: a short row is otherwise a few dependent round
// trips to memory.
constexpr int kUnroll = 4;

__device__ __forceinline__ void unpack(uint4 w, float (&out)[8]) {
  const uint32_t words[4] = {w.x, w.y, w.z, w.w};
  #pragma unroll
  for (int e = 0; e < 4; ++e) {
    const float2 f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&words[e]));
    out[2 * e] = f.x;
    out[2 * e + 1] = f.y;
  }
}

__device__ __forceinline__ uint4 pack(const float (&v)[8]) {
  uint32_t words[4];
  #pragma unroll
  for (int e = 0; e < 4; ++e) {
    const __nv_bfloat162 b = __floats2bfloat162_rn(v[2 * e], v[2 * e + 1]);
    words[e] = *reinterpret_cast<const uint32_t*>(&b);
  }
  return make_uint4(words[0], words[1], words[2], words[3]);
}

__device__ __forceinline__ float round_bf16(float v) { return __bfloat162float(__float2bfloat16_rn(v)); }

// Sum over the block; every thread gets it.
__device__ float block_sum(float v, float* scratch) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = v;
  __syncthreads();
  float total = 0.0f;
  #pragma unroll
  for (int w = 0; w < kWarps; ++w) total += scratch[w];
  return total;
}

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
  __shared__ float sums[kWarps];
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
      float v[8];
      unpack(a[i], v);
      #pragma unroll
      for (int e = 0; e < 8; ++e) sum_sq += v[e] * v[e];
    }
    const float inv_rms = rsqrtf(block_sum(sum_sq, sums) / static_cast<float>(p.k) + p.norm_eps);
    const uint4* nw = reinterpret_cast<const uint4*>(p.norm_weight);
    for (int64_t i = threadIdx.x; i < words; i += kThreads) {
      float v[8], g[8];
      unpack(a[i], v);
      unpack(nw[i], g);
      #pragma unroll
      for (int e = 0; e < 8; ++e) v[e] = round_bf16(v[e] * inv_rms) * g[e];
      act[i] = pack(v);
    }
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
      float av[8];
      unpack(act[i], av);
      #pragma unroll
      for (int r = 0; r < kRows; ++r) {
        float wv[8];
        unpack(wq[r][u], wv);
        #pragma unroll
        for (int e = 0; e < 8; ++e) acc[r] += wv[e] * av[e];
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
    *c = __bfloat16_as_ushort(__float2bfloat16_rn(round_bf16(g / (1.0f + __expf(-g))) * u));
  } else {
    float v = acc[0];
    if (p.accumulate) v += __bfloat162float(__ushort_as_bfloat16(*c));
    *c = __bfloat16_as_ushort(__float2bfloat16_rn(v));
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
