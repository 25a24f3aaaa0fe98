#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cfloat>

#include "kernels/cuda/decode_attention_params.h"

namespace tessera::kernels::cuda {

namespace {

constexpr int kWarps = 4;
constexpr int kMaxGroup = 8;

__device__ __forceinline__ float bf16_to_float(Bf16 bits) { return __bfloat162float(__ushort_as_bfloat16(bits)); }

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Lane l holds dimensions [l * kElems, (l + 1) * kElems) of every head it touches.
template <int kElems>
__device__ __forceinline__ void load_row(const Bf16* row, float (&out)[kElems]) {
  #pragma unroll
  for (int e = 0; e < kElems; ++e) out[e] = bf16_to_float(row[e]);
}

template <int kHeadDim>
__global__ void __launch_bounds__(kWarps * 32) decode_attention_kernel(DecodeAttentionParams p) {
  constexpr int kElems = kHeadDim / 32;
  const int kv = blockIdx.x;
  const int64_t s = blockIdx.y;
  const int group = static_cast<int>(p.num_q_heads / p.num_kv_heads);
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int64_t len = p.seq_lens[s];
  const int32_t* pages = p.block_tables + s * p.max_pages_per_seq;

  float q[kMaxGroup][kElems];
  float m[kMaxGroup], l[kMaxGroup], acc[kMaxGroup][kElems];
  #pragma unroll
  for (int h = 0; h < kMaxGroup; ++h) {
    m[h] = -FLT_MAX;
    l[h] = 0.0f;
    #pragma unroll
    for (int e = 0; e < kElems; ++e) acc[h][e] = q[h][e] = 0.0f;
    if (h < group) {
      load_row<kElems>(p.q + (s * p.num_q_heads + kv * group + h) * kHeadDim + lane * kElems, q[h]);
      #pragma unroll
      for (int e = 0; e < kElems; ++e) q[h][e] *= p.scale;
    }
  }

  for (int64_t i = warp; i < len; i += kWarps) {
    const int64_t slot = static_cast<int64_t>(pages[i / p.page_size]) * p.page_size + i % p.page_size;
    const int64_t offset = (slot * p.num_kv_heads + kv) * kHeadDim + lane * kElems;
    float k[kElems], v[kElems];
    load_row<kElems>(p.k_cache + offset, k);
    load_row<kElems>(p.v_cache + offset, v);
    #pragma unroll
    for (int h = 0; h < kMaxGroup; ++h) {
      if (h >= group) break;
      float dot = 0.0f;
      #pragma unroll
      for (int e = 0; e < kElems; ++e) dot += q[h][e] * k[e];
      const float logit = warp_sum(dot);
      const float m_new = fmaxf(m[h], logit);
      const float correction = __expf(m[h] - m_new);
      const float weight = __expf(logit - m_new);
      l[h] = l[h] * correction + weight;
      #pragma unroll
      for (int e = 0; e < kElems; ++e) acc[h][e] = acc[h][e] * correction + weight * v[e];
      m[h] = m_new;
    }
  }

  // Merge the warps' partial states: out = sum_w acc_w e^(m_w - M) / sum_w l_w e^(m_w - M).
  __shared__ float sm_m[kWarps][kMaxGroup];
  __shared__ float sm_l[kWarps][kMaxGroup];
  __shared__ float sm_acc[kWarps][kMaxGroup][kHeadDim];
  #pragma unroll
  for (int h = 0; h < kMaxGroup; ++h) {
    if (h >= group) break;
    if (lane == 0) {
      sm_m[warp][h] = m[h];
      sm_l[warp][h] = l[h];
    }
    #pragma unroll
    for (int e = 0; e < kElems; ++e) sm_acc[warp][h][lane * kElems + e] = acc[h][e];
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < group * kHeadDim; idx += kWarps * 32) {
    const int h = idx / kHeadDim;
    const int d = idx - h * kHeadDim;
    float big = -FLT_MAX;
    #pragma unroll
    for (int w = 0; w < kWarps; ++w) big = fmaxf(big, sm_m[w][h]);
    float num = 0.0f, den = 0.0f;
    #pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float f = sm_l[w][h] > 0.0f ? __expf(sm_m[w][h] - big) : 0.0f;
      num += sm_acc[w][h][d] * f;
      den += sm_l[w][h] * f;
    }
    p.out[(s * p.num_q_heads + kv * group + h) * kHeadDim + d] = __bfloat16_as_ushort(__float2bfloat16_rn(num / den));
  }
}

}  // namespace

namespace launch {

const char* decode_attention(const DecodeAttentionParams& p, Stream stream) {
  const dim3 grid(static_cast<unsigned>(p.num_kv_heads), static_cast<unsigned>(p.num_seqs));
  if (p.head_dim == 64) {
    decode_attention_kernel<64><<<grid, kWarps * 32, 0, stream>>>(p);
  } else {
    decode_attention_kernel<128><<<grid, kWarps * 32, 0, stream>>>(p);
  }
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

}  // namespace launch

}  // namespace tessera::kernels::cuda
