#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cfloat>

#include "kernels/cuda/prefill_attention_params.h"

namespace tessera::kernels::cuda {

namespace {

using namespace nvcuda;
using bf16 = __nv_bfloat16;

constexpr int kRows = kPrefillTileRows;  // query rows per block
constexpr int kKeys = 64;                // keys per K/V tile
constexpr int kWarps = 4;                // each owns 16 query rows
constexpr int kThreads = kWarps * 32;
static_assert(kRows == kWarps * 16, "one 16-row MMA strip per warp");

// Shared memory, padded so rows start in different banks and every WMMA fragment starts
// 32-byte aligned: Q, K and V tiles (bf16), logits S (fp32), weights P (bf16), the output
// accumulator O (fp32) and per-row softmax state.
template <int D>
struct Layout {
  static constexpr int kLdQ = D + 8;       // bf16 elements: Q, K and V rows
  static constexpr int kLdS = kKeys + 4;   // fp32
  static constexpr int kLdP = kKeys + 8;   // bf16
  static constexpr int kLdO = D + 4;       // fp32
  static constexpr int round(int bytes) { return (bytes + 127) / 128 * 128; }
  static constexpr int kQ = 0;
  static constexpr int kK = kQ + round(kRows * kLdQ * 2);
  static constexpr int kV = kK + round(kKeys * kLdQ * 2);
  static constexpr int kS = kV + round(kKeys * kLdQ * 2);
  static constexpr int kP = kS + round(kRows * kLdS * 4);
  static constexpr int kO = kP + round(kRows * kLdP * 2);
  static constexpr int kState = kO + round(kRows * kLdO * 4);
  static constexpr int kBytes = kState + round(3 * kRows * 4);
};

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <int D>
__global__ void __launch_bounds__(kThreads) prefill_attention_kernel(PrefillAttentionParams p) {
  using L = Layout<D>;
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* q_s = reinterpret_cast<bf16*>(smem + L::kQ);
  bf16* k_s = reinterpret_cast<bf16*>(smem + L::kK);
  bf16* v_s = reinterpret_cast<bf16*>(smem + L::kV);
  float* s_s = reinterpret_cast<float*>(smem + L::kS);
  bf16* p_s = reinterpret_cast<bf16*>(smem + L::kP);
  float* o_s = reinterpret_cast<float*>(smem + L::kO);
  float* m_s = reinterpret_cast<float*>(smem + L::kState);
  float* l_s = m_s + kRows;
  float* alpha_s = l_s + kRows;

  const PrefillTile tile = p.tiles[blockIdx.x];
  const int head = blockIdx.y;
  const int kv_head = head / static_cast<int>(p.num_q_heads / p.num_kv_heads);
  const int64_t q_stride = p.q_stride > 0 ? p.q_stride : p.num_q_heads * D;
  const int64_t out_stride = p.num_q_heads * D;
  const int32_t* pages = p.block_tables + static_cast<int64_t>(tile.table_row) * p.max_pages_per_seq;
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  constexpr int kWords = D / 8;  // 16-byte words per row

  for (int i = threadIdx.x; i < kRows * kWords; i += kThreads) {
    const int r = i / kWords, c = i % kWords;
    uint4 w = make_uint4(0, 0, 0, 0);
    if (r < tile.num_rows) {
      w = *reinterpret_cast<const uint4*>(p.q + (tile.row_begin + r) * q_stride + head * D + c * 8);
    }
    *reinterpret_cast<uint4*>(q_s + r * L::kLdQ + c * 8) = w;
  }
  for (int i = threadIdx.x; i < kRows * L::kLdO; i += kThreads) o_s[i] = 0.0f;
  if (threadIdx.x < kRows) {
    m_s[threadIdx.x] = -FLT_MAX;
    l_s[threadIdx.x] = 0.0f;
  }

  const int64_t last = tile.first_pos + tile.num_rows - 1;
  const int64_t hi = last + 1;  // keys [lo, hi) can matter to some row of the tile
  const int64_t lo = p.sliding_window > 0 && tile.first_pos + 1 > p.sliding_window
                         ? tile.first_pos + 1 - p.sliding_window
                         : 0;
  for (int64_t k0 = lo / kKeys * kKeys; k0 < hi; k0 += kKeys) {
    __syncthreads();  // the previous tile's K/V are consumed; Q and O are ready
    for (int i = threadIdx.x; i < kKeys * kWords; i += kThreads) {
      const int j = i / kWords, c = i % kWords;
      const int64_t t = k0 + j;
      uint4 kw = make_uint4(0, 0, 0, 0), vw = kw;
      if (t < hi) {
        const int64_t slot = static_cast<int64_t>(pages[t / p.page_size]) * p.page_size + t % p.page_size;
        const int64_t at = (slot * p.num_kv_heads + kv_head) * D + c * 8;
        kw = *reinterpret_cast<const uint4*>(p.k_cache + at);
        vw = *reinterpret_cast<const uint4*>(p.v_cache + at);
      }
      *reinterpret_cast<uint4*>(k_s + j * L::kLdQ + c * 8) = kw;
      *reinterpret_cast<uint4*>(v_s + j * L::kLdQ + c * 8) = vw;
    }
    __syncthreads();

    // S = Q·Kᵀ for this warp's 16 rows.
    #pragma unroll
    for (int n = 0; n < kKeys / 16; ++n) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::fill_fragment(acc, 0.0f);
      #pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> b;
        wmma::load_matrix_sync(a, q_s + warp * 16 * L::kLdQ + kk * 16, L::kLdQ);
        wmma::load_matrix_sync(b, k_s + n * 16 * L::kLdQ + kk * 16, L::kLdQ);
        wmma::mma_sync(acc, a, b, acc);
      }
      wmma::store_matrix_sync(s_s + warp * 16 * L::kLdS + n * 16, acc, L::kLdS, wmma::mem_row_major);
    }
    __syncwarp();

    // Running softmax per row; lanes over the tile's 64 keys, two each.
    for (int rr = 0; rr < 16; ++rr) {
      const int r = warp * 16 + rr;
      const int64_t pos = tile.first_pos + r;
      const int64_t row_lo = p.sliding_window > 0 ? pos + 1 - p.sliding_window : 0;
      float s[2];
      #pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int c = lane + 32 * h;
        const int64_t t = k0 + c;
        const bool keep = r < tile.num_rows && t <= pos && t >= row_lo;
        s[h] = keep ? s_s[r * L::kLdS + c] * p.scale : -FLT_MAX;
      }
      const float m_old = m_s[r];
      const float m_new = fmaxf(m_old, warp_max(fmaxf(s[0], s[1])));
      float w[2];
      #pragma unroll
      for (int h = 0; h < 2; ++h) w[h] = s[h] == -FLT_MAX ? 0.0f : __expf(s[h] - m_new);
      const float sum = warp_sum(w[0] + w[1]);
      p_s[r * L::kLdP + lane] = __float2bfloat16_rn(w[0]);
      p_s[r * L::kLdP + lane + 32] = __float2bfloat16_rn(w[1]);
      if (lane == 0) {
        const float alpha = m_old == -FLT_MAX ? 0.0f : __expf(m_old - m_new);
        alpha_s[r] = alpha;
        l_s[r] = l_s[r] * alpha + sum;
        m_s[r] = m_new;
      }
    }
    __syncwarp();
    for (int i = lane; i < 16 * D; i += 32) {
      const int r = warp * 16 + i / D;
      o_s[r * L::kLdO + i % D] *= alpha_s[r];
    }
    __syncwarp();

    // O += P·V for this warp's rows.
    #pragma unroll
    for (int n = 0; n < D / 16; ++n) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::load_matrix_sync(acc, o_s + warp * 16 * L::kLdO + n * 16, L::kLdO, wmma::mem_row_major);
      #pragma unroll
      for (int kk = 0; kk < kKeys / 16; ++kk) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> b;
        wmma::load_matrix_sync(a, p_s + warp * 16 * L::kLdP + kk * 16, L::kLdP);
        wmma::load_matrix_sync(b, v_s + kk * 16 * L::kLdQ + n * 16, L::kLdQ);
        wmma::mma_sync(acc, a, b, acc);
      }
      wmma::store_matrix_sync(o_s + warp * 16 * L::kLdO + n * 16, acc, L::kLdO, wmma::mem_row_major);
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < tile.num_rows * D; i += kThreads) {
    const int r = i / D, c = i % D;
    const float v = o_s[r * L::kLdO + c] / l_s[r];
    p.out[(tile.row_begin + r) * out_stride + head * D + c] = __bfloat16_as_ushort(__float2bfloat16_rn(v));
  }
}

template <int D>
const char* launch_for(const PrefillAttentionParams& p, Stream stream) {
  static const cudaError_t configured = cudaFuncSetAttribute(
      prefill_attention_kernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, Layout<D>::kBytes);
  if (configured != cudaSuccess) return cudaGetErrorString(configured);
  const dim3 grid(static_cast<unsigned>(p.num_tiles), static_cast<unsigned>(p.num_q_heads));
  prefill_attention_kernel<D><<<grid, kThreads, Layout<D>::kBytes, stream>>>(p);
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

}  // namespace

namespace launch {

const char* prefill_attention(const PrefillAttentionParams& p, Stream stream) {
  return p.head_dim == 64 ? launch_for<64>(p, stream) : launch_for<128>(p, stream);
}

}  // namespace launch

}  // namespace tessera::kernels::cuda
