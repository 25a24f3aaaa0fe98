// bf16 helpers the CUDA kernels share: conversions (with the roundings the CPU engine
// mirrors), eight values per 16-byte word, and a block-wide sum.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/cuda/layer_ops_params.h"

namespace tessera::kernels::cuda::bf16 {

__device__ __forceinline__ float to_float(Bf16 bits) { return __bfloat162float(__ushort_as_bfloat16(bits)); }
__device__ __forceinline__ Bf16 to_bf16(float v) { return __bfloat16_as_ushort(__float2bfloat16_rn(v)); }
__device__ __forceinline__ float round_bf16(float v) { return to_float(to_bf16(v)); }

// silu(g) rounded to bf16, as the unfused MLP rounds it before the product with up.
__device__ __forceinline__ float silu_bf16(float g) { return round_bf16(g / (1.0f + __expf(-g))); }

// Two bf16 values in one 32-bit word (the lower one first).
__device__ __forceinline__ float2 unpack2(uint32_t bits) {
  return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&bits));
}

// Eight bf16 values in one 16-byte word, and back.
struct Bf16x8 {
  float v[8];
};
__device__ __forceinline__ Bf16x8 unpack8(uint4 w) {
  Bf16x8 out;
  const uint32_t words[4] = {w.x, w.y, w.z, w.w};
  #pragma unroll
  for (int e = 0; e < 4; ++e) {
    const float2 f = unpack2(words[e]);
    out.v[2 * e] = f.x;
    out.v[2 * e + 1] = f.y;
  }
  return out;
}
__device__ __forceinline__ uint4 pack8(const Bf16x8& x) {
  uint32_t words[4];
  #pragma unroll
  for (int e = 0; e < 4; ++e) {
    const __nv_bfloat162 b = __floats2bfloat162_rn(x.v[2 * e], x.v[2 * e + 1]);
    words[e] = *reinterpret_cast<const uint32_t*>(&b);
  }
  return make_uint4(words[0], words[1], words[2], words[3]);
}

// RMSNorm of eight values given the row's 1 / rms: round_bf16(x · inv_rms) · weight, as
// the CPU engine and Hugging Face's bf16 order have it (the caller rounds the result).
__device__ __forceinline__ Bf16x8 rms_scale8(Bf16x8 x, float inv_rms, uint4 weight) {
  const Bf16x8 w = unpack8(weight);
  #pragma unroll
  for (int e = 0; e < 8; ++e) x.v[e] = round_bf16(x.v[e] * inv_rms) * w.v[e];
  return x;
}

// Sum of v over the block (every thread gets it). blockDim.x is a multiple of 32, at most 1024.
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float warp_sums[32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    const int num_warps = blockDim.x >> 5;
    v = lane < num_warps ? warp_sums[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0) warp_sums[0] = v;
  }
  __syncthreads();
  return warp_sums[0];
}

}  // namespace tessera::kernels::cuda::bf16
