#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "kernels/cuda/pdl.cuh"

#include "kernels/cuda/gemm_params.h"

namespace tessera::kernels::cuda {

namespace {

constexpr int kWarps = 8;

__device__ __forceinline__ void unpack(uint4 w, float (&out)[8]) {
  const uint32_t words[4] = {w.x, w.y, w.z, w.w};
  #pragma unroll
  for (int e = 0; e < 4; ++e) {
    const float2 f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&words[e]));
    out[2 * e] = f.x;
    out[2 * e + 1] = f.y;
  }
}

// One warp per output column j: the weight row W[j] streams through once, 16 bytes per lane
// per load, kUnroll loads in flight per lane (a short row is otherwise a few dependent
// round trips to memory), against the activation row (small: it stays in L1/L2).
constexpr int kUnroll = 4;

__global__ void __launch_bounds__(kWarps * 32) gemv_kernel(GemmParams p) {
  pdl_wait();
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (j >= p.n) return;
  const int lane = threadIdx.x & 31;
  const int64_t words = p.k / 8;
  const uint4* w = reinterpret_cast<const uint4*>(p.w) + j * words;
  const uint4* a = reinterpret_cast<const uint4*>(p.a);
  float acc = 0.0f;
  for (int64_t i0 = lane; i0 < words; i0 += 32 * kUnroll) {
    uint4 wq[kUnroll], aq[kUnroll];
    #pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = i0 + 32 * u;
      if (i < words) {
        wq[u] = __ldcs(w + i);  // streamed once: do not keep it in cache
        aq[u] = __ldg(a + i);
      } else {
        wq[u] = aq[u] = make_uint4(0, 0, 0, 0);
      }
    }
    #pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      float wv[8], av[8];
      unpack(wq[u], wv);
      unpack(aq[u], av);
      #pragma unroll
      for (int e = 0; e < 8; ++e) acc += wv[e] * av[e];
    }
  }
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  if (lane == 0) {
    Bf16* c = p.c + j;
    if (p.accumulate) acc += __bfloat162float(__ushort_as_bfloat16(*c));
    *c = __bfloat16_as_ushort(__float2bfloat16_rn(acc));
  }
}

// gemv_kernel's twin for the MLP: warp j streams gate row j and up row j (n rows apart)
// and writes silu(gate) · up, so the two projections' outputs never leave registers.
__global__ void __launch_bounds__(kWarps * 32) gemv_gate_up_silu_kernel(GemmParams p) {
  pdl_wait();
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (j >= p.n) return;
  const int lane = threadIdx.x & 31;
  const int64_t words = p.k / 8;
  const uint4* wg = reinterpret_cast<const uint4*>(p.w) + j * words;
  const uint4* wu = wg + p.n * words;
  const uint4* a = reinterpret_cast<const uint4*>(p.a);
  float gate = 0.0f, up = 0.0f;
  for (int64_t i0 = lane; i0 < words; i0 += 32 * kUnroll) {
    uint4 gq[kUnroll], uq[kUnroll], aq[kUnroll];
    #pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t i = i0 + 32 * u;
      if (i < words) {
        gq[u] = __ldcs(wg + i);
        uq[u] = __ldcs(wu + i);
        aq[u] = __ldg(a + i);
      } else {
        gq[u] = uq[u] = aq[u] = make_uint4(0, 0, 0, 0);
      }
    }
    #pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      float gv[8], uv[8], av[8];
      unpack(gq[u], gv);
      unpack(uq[u], uv);
      unpack(aq[u], av);
      #pragma unroll
      for (int e = 0; e < 8; ++e) {
        gate += gv[e] * av[e];
        up += uv[e] * av[e];
      }
    }
  }
  for (int o = 16; o > 0; o >>= 1) {
    gate += __shfl_xor_sync(0xffffffffu, gate, o);
    up += __shfl_xor_sync(0xffffffffu, up, o);
  }
  if (lane == 0) {
    const float g = __bfloat162float(__float2bfloat16_rn(gate));
    const float u = __bfloat162float(__float2bfloat16_rn(up));
    const float silu = __bfloat162float(__float2bfloat16_rn(g / (1.0f + __expf(-g))));
    p.c[j] = __bfloat16_as_ushort(__float2bfloat16_rn(silu * u));
  }
}

}  // namespace

namespace launch {

const char* gemv(const GemmParams& p, Stream stream) {
  const unsigned blocks = static_cast<unsigned>((p.n + kWarps - 1) / kWarps);
  cudaError_t e = launch_pdl(p.gate_up_silu ? gemv_gate_up_silu_kernel : gemv_kernel, blocks, kWarps * 32, 0, stream, p);
  if (e == cudaSuccess) e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

}  // namespace launch

}  // namespace tessera::kernels::cuda
