#include "kernels/cuda/layer_ops_params.h"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "kernels/cuda/bf16.cuh"
#include "kernels/cuda/pdl.cuh"

#include <algorithm>
#include <cstdint>

namespace tessera::kernels::cuda {

namespace {

using namespace bf16;

// One block per token; 16-byte copies when rows allow them.
__global__ void embedding_kernel(const Bf16* __restrict__ table, const int32_t* __restrict__ ids, Bf16* __restrict__ out,
                                 int64_t width) {
  pdl_wait();
  const int64_t t = blockIdx.x;
  const Bf16* src = table + static_cast<int64_t>(ids[t]) * width;
  Bf16* dst = out + t * width;
  if (width % 8 == 0) {
    const uint4* s = reinterpret_cast<const uint4*>(src);
    uint4* d = reinterpret_cast<uint4*>(dst);
    for (int64_t i = threadIdx.x; i < width / 8; i += blockDim.x) d[i] = s[i];
  } else {
    for (int64_t i = threadIdx.x; i < width; i += blockDim.x) dst[i] = src[i];
  }
}

// rms_norm_kernel for rows of whole 16-byte words (width % 8 == 0, aligned buffers).
__global__ void rms_norm_vec8_kernel(const uint4* x, uint4* residual, const uint4* __restrict__ weight,
                                     uint4* out, int64_t width, float eps) {
  pdl_wait();
  const int64_t row = blockIdx.x;
  const int64_t words = width / 8;
  const uint4* xr = x + row * words;
  uint4* rr = residual ? residual + row * words : nullptr;
  float sum_sq = 0.0f;
  for (int64_t i = threadIdx.x; i < words; i += blockDim.x) {
    Bf16x8 v = unpack8(xr[i]);
    if (rr) {
      const Bf16x8 r = unpack8(rr[i]);
      #pragma unroll
      for (int e = 0; e < 8; ++e) v.v[e] = round_bf16(v.v[e] + r.v[e]);
      rr[i] = pack8(v);
    }
    #pragma unroll
    for (int e = 0; e < 8; ++e) sum_sq += v.v[e] * v.v[e];
  }
  const float inv_rms = rsqrtf(block_sum(sum_sq) / static_cast<float>(width) + eps);
  const uint4* src = rr ? rr : xr;
  uint4* o = out + row * words;
  for (int64_t i = threadIdx.x; i < words; i += blockDim.x) o[i] = pack8(rms_scale8(unpack8(src[i]), inv_rms, weight[i]));
}

__global__ void silu_mul_vec8_kernel(const uint4* __restrict__ gate_up, uint4* __restrict__ out, int64_t rows,
                                     int64_t width) {
  pdl_wait();
  const int64_t words = width / 8;
  const int64_t n = rows * words;
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < n;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = k / words;
    const int64_t c = k - r * words;
    const Bf16x8 g = unpack8(gate_up[r * 2 * words + c]);
    const Bf16x8 u = unpack8(gate_up[r * 2 * words + words + c]);
    Bf16x8 o;
    #pragma unroll
    for (int e = 0; e < 8; ++e) o.v[e] = silu_bf16(g.v[e]) * u.v[e];
    out[k] = pack8(o);
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// One block per row: the (residual) sum and its squares, then the scaled row.
__global__ void rms_norm_kernel(const Bf16* x, Bf16* residual, const Bf16* __restrict__ weight, Bf16* out,
                                int64_t width, float eps) {
  pdl_wait();
  const int64_t row = blockIdx.x;
  const Bf16* xr = x + row * width;
  Bf16* rr = residual ? residual + row * width : nullptr;
  float sum_sq = 0.0f;
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) {
    float v = to_float(xr[i]);
    if (rr) {
      v = round_bf16(v + to_float(rr[i]));
      rr[i] = to_bf16(v);
    }
    sum_sq += v * v;
  }
  const float inv_rms = rsqrtf(block_sum(sum_sq) / static_cast<float>(width) + eps);
  // Each thread reads back only what it wrote itself: no barrier needed before out may
  // overwrite x.
  const Bf16* src = rr ? rr : xr;
  Bf16* o = out + row * width;
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) {
    o[i] = to_bf16(round_bf16(to_float(src[i]) * inv_rms) * to_float(weight[i]));
  }
}

__global__ void silu_mul_kernel(const Bf16* __restrict__ gate_up, Bf16* __restrict__ out, int64_t rows, int64_t width) {
  pdl_wait();
  const int64_t n = rows * width;
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < n;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = k / width;
    const int64_t c = k - r * width;
    const float g = to_float(gate_up[r * 2 * width + c]);
    const float u = to_float(gate_up[r * 2 * width + width + c]);
    out[k] = to_bf16(silu_bf16(g) * u);
  }
}

// Rotates the pair (a, b) of pair index j: (a cos - b sin, b cos + a sin).
__device__ __forceinline__ void rotate_pair(const Bf16* src, Bf16* dst, int64_t j, int64_t head_dim, bool half, float c,
                                            float s) {
  const int64_t ia = half ? j : 2 * j;
  const int64_t ib = half ? j + head_dim / 2 : 2 * j + 1;
  const float a = to_float(src[ia]);
  const float b = to_float(src[ib]);
  dst[ia] = to_bf16(a * c - b * s);
  dst[ib] = to_bf16(b * c + a * s);
}

// Block (token, slice): one rotated pair per thread, over the q heads (in place) then the
// k heads (into the cache), and one copied v element. A token spreads over several blocks:
// a decode step has a single token, whose pairs would otherwise run one after another.
constexpr int kRopeThreads = 256;
__global__ void __launch_bounds__(kRopeThreads) rope_kv_kernel(RopeKvParams p) {
  pdl_wait();
  const int64_t t = blockIdx.x;
  const int half_dim = static_cast<int>(p.head_dim / 2);
  const int w = static_cast<int>(blockIdx.y) * kRopeThreads + static_cast<int>(threadIdx.x);
  const int num_q = static_cast<int>(p.num_q_heads);
  const int num_kv = static_cast<int>(p.num_kv_heads);
  const int64_t slot = p.slots[t];
  if (w < (num_q + num_kv) * half_dim) {
    const int h = w / half_dim;
    const int j = w - h * half_dim;
    float s, c;
    sincosf(static_cast<float>(p.positions[t]) * p.inv_freq[j], &s, &c);
    const bool half = p.style == RopeStyle::kHalf;
    if (h < num_q) {
      Bf16* q = p.q + t * p.q_stride + static_cast<int64_t>(h) * p.head_dim;
      rotate_pair(q, q, j, p.head_dim, half, c, s);
    } else {
      const int kh = h - num_q;
      rotate_pair(p.k + t * p.k_stride + static_cast<int64_t>(kh) * p.head_dim,
                  p.k_cache + (slot * num_kv + kh) * p.head_dim, j, p.head_dim, half, c, s);
    }
  }
  if (w < num_kv * p.head_dim) p.v_cache[slot * num_kv * p.head_dim + w] = p.v[t * p.v_stride + w];
}

__global__ void add_kernel(Bf16* x, const Bf16* y, int64_t count, float scale) {
  pdl_wait();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    x[i] = to_bf16(to_float(x[i]) + scale * to_float(y[i]));
  }
}

// One block per gathered row.
__global__ void gather_rows_kernel(const Bf16* __restrict__ src, const int32_t* __restrict__ rows,
                                   Bf16* __restrict__ dst, int64_t width) {
  pdl_wait();
  const Bf16* from = src + static_cast<int64_t>(rows[blockIdx.x]) * width;
  Bf16* to = dst + static_cast<int64_t>(blockIdx.x) * width;
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) to[i] = from[i];
}

__global__ void add_bias_kernel(AddBiasParams p) {
  pdl_wait();
  const int64_t total = p.rows * p.n;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / p.n;
    const int64_t j = i - r * p.n;
    Bf16& y = p.y[r * p.y_stride + j];
    y = to_bf16(to_float(y) + to_float(p.bias[j]));
  }
}

unsigned grid_for(int64_t n) { return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>((n + 255) / 256, 132 * 16))); }

const char* launched() {
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

const char* launched(cudaError_t e) {
  if (e != cudaSuccess) {
    cudaGetLastError();
    return cudaGetErrorString(e);
  }
  return launched();
}

// Threads for a block that walks a row of `width`: a multiple of 32, at most 1024.
int row_threads(int64_t width) {
  int64_t n = 32;
  while (n < width && n < 1024) n *= 2;
  return static_cast<int>(n);
}

}  // namespace

namespace launch {

const char* embedding(const EmbeddingParams& p, Stream stream) {
  return launched(
      launch_pdl(embedding_kernel, static_cast<unsigned>(p.num_tokens), 128, 0, stream, p.table, p.token_ids, p.out, p.width));
}

const char* rms_norm(const RmsNormParams& p, Stream stream) {
  if (p.width % 8 == 0 && aligned16(p.x) && aligned16(p.weight) && aligned16(p.out) &&
      (!p.residual || aligned16(p.residual))) {
    return launched(launch_pdl(rms_norm_vec8_kernel, static_cast<unsigned>(p.rows), row_threads(p.width / 8), 0, stream,
                               reinterpret_cast<const uint4*>(p.x), reinterpret_cast<uint4*>(p.residual),
                               reinterpret_cast<const uint4*>(p.weight), reinterpret_cast<uint4*>(p.out), p.width,
                               p.eps));
  }
  return launched(launch_pdl(rms_norm_kernel, static_cast<unsigned>(p.rows), row_threads(p.width), 0, stream, p.x,
                             p.residual, p.weight, p.out, p.width, p.eps));
}

const char* silu_mul(const SiluMulParams& p, Stream stream) {
  if (p.width % 8 == 0 && aligned16(p.gate_up) && aligned16(p.out)) {
    const int64_t words = p.rows * p.width / 8;
    const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((words + 255) / 256, 132 * 16));
    return launched(launch_pdl(silu_mul_vec8_kernel, blocks, 256, 0, stream,
                               reinterpret_cast<const uint4*>(p.gate_up), reinterpret_cast<uint4*>(p.out), p.rows,
                               p.width));
  }
  const int64_t n = p.rows * p.width;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 132 * 16));
  return launched(launch_pdl(silu_mul_kernel, blocks, 256, 0, stream, p.gate_up, p.out, p.rows, p.width));
}

const char* rope_and_cache_kv(const RopeKvParams& p, Stream stream) {
  const int64_t pairs = (p.num_q_heads + p.num_kv_heads) * (p.head_dim / 2);
  const int64_t threads = std::max(pairs, p.num_kv_heads * p.head_dim);  // a thread per pair and per v element
  const dim3 grid(static_cast<unsigned>(p.num_tokens), static_cast<unsigned>((threads + kRopeThreads - 1) / kRopeThreads));
  return launched(launch_pdl(rope_kv_kernel, grid, kRopeThreads, 0, stream, p));
}

const char* add(const AddParams& p, Stream stream) {
  return launched(launch_pdl(add_kernel, grid_for(p.count), 256, 0, stream, p.x, p.y, p.count, p.scale));
}

const char* gather_rows(const GatherRowsParams& p, Stream stream) {
  return launched(launch_pdl(gather_rows_kernel, static_cast<unsigned>(p.num_rows), row_threads(p.width), 0, stream,
                             p.src, p.rows, p.dst, p.width));
}

const char* add_bias(const AddBiasParams& p, Stream stream) {
  return launched(launch_pdl(add_bias_kernel, grid_for(p.rows * p.n), 256, 0, stream, p));
}

}  // namespace launch

}  // namespace tessera::kernels::cuda
