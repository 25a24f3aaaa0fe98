#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <cmath>

#include "kernels/cuda/cp_async.cuh"
#include "kernels/cuda/decode_attention_params.h"
#include "kernels/cuda/mma.cuh"
#include "kernels/cuda/pdl.cuh"

namespace tessera::kernels::cuda {

namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;

// Block (kv head, sequence, piece): tokens [begin, end) of the sequence, for the query
// heads of the group, on the tensor cores (mma.sync m16n8k16). The group's query heads are
// the rows of the A operand (rows g < group of 16; the others zeros), keys the columns of
// S. Each warp walks its own 16-key tiles of the block's range (tiles w, w + 4, ...),
// streaming them through its own ring of kStages shared-memory buffers with cp.async, with
// its own online softmax, so the main loop has no block barrier; the four warps' states
// are merged once at the end. K/V rows are padded by 8 elements so ldmatrix reads hit
// distinct banks. The softmax weights enter P·V as bf16 (as in flash attention).
// kPieces: the sequence is split into pieces (p.split_tokens, p.max_splits), each block
// writing its piece's softmax state to the workspace for merge_pieces_kernel; otherwise
// each block writes its heads' output. (Merging in the last block of each sequence
// instead, counted with atomics, was 0.15-0.2 ms a step slower at batch 1 on the H100:
// its merge is one block's serial chain where the merge kernel spreads it over heads.)
// History, on the H100 (docs/BENCHMARKS.md): a kernel with one multiply-add instruction
// per K and V element and head, in registers (4-5 blocks a multiprocessor), reached 61-63%
// of the copy rate at batch 128-256 and context 1024; Nsight Compute found its warps
// waiting on their global loads, and a version streaming tiles through shared memory with
// cp.async waiting on shared memory and issue instead (59-65%). This one: 91-94%.
namespace mma_decode {
constexpr int kKeys = 16;
constexpr int kStages = 3;
template <int kHeadDim>
struct Shape {
  static constexpr int kLd = kHeadDim + 8;
  static constexpr int kTileElems = kKeys * kLd;                  // one K or V tile
  static constexpr int kWarpElems = kStages * 2 * kTileElems;     // a warp's ring
  static constexpr int kBytes = kWarps * kWarpElems * 2;
  static_assert(kBytes >= kWarps * 8 * (kHeadDim + 2) * 4, "the merge reuses the rings");
};
}  // namespace mma_decode

template <int kHeadDim, bool kPieces>
__global__ void __launch_bounds__(kThreads, 3) decode_attention_kernel(DecodeAttentionParams p) {
  using S = mma_decode::Shape<kHeadDim>;
  constexpr int kLd = S::kLd;
  constexpr int kKeys = mma_decode::kKeys;
  constexpr int kStages = mma_decode::kStages;
  constexpr int kWords = kHeadDim / 8;  // 16-byte words per row
  pdl_wait();
  extern __shared__ __align__(16) unsigned char dyn[];
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int g = lane >> 2, qd = lane & 3;
  Bf16* ring = reinterpret_cast<Bf16*>(dyn) + warp * S::kWarpElems;  // [stage][K, V][kKeys][kLd]

  const int kv = blockIdx.x;
  const int64_t s = blockIdx.y;
  const int64_t row = p.rows ? p.rows[s] : s;
  const int64_t len = p.seq_lens[row];
  const int64_t lo = p.sliding_window > 0 && len > p.sliding_window ? len - p.sliding_window : 0;
  const int64_t split = kPieces ? p.split_tokens : len - lo;
  const int64_t begin = lo + static_cast<int64_t>(blockIdx.z) * split;
  if (begin >= len) return;
  const int64_t end = len < begin + split ? len : begin + split;
  const int group = static_cast<int>(p.num_q_heads / p.num_kv_heads);
  const int32_t* pages = p.block_tables + (p.table_rows ? p.table_rows[row] : row) * p.max_pages_per_seq;
  const int page_size = static_cast<int>(p.page_size);
  const int page_shift = __ffs(page_size) - 1;
  const bool page_pow2 = (page_size & (page_size - 1)) == 0;
  const int64_t num_tiles = (end - begin + kKeys - 1) / kKeys;
  const int64_t my_tiles = num_tiles > warp ? (num_tiles - warp + kWarps - 1) / kWarps : 0;

  // Starts the copy of this warp's i-th tile into `stage` (one cp.async group).
  const auto load = [&](int64_t i, int stage) {
    const int64_t t0 = begin + (warp + i * kWarps) * kKeys;
    Bf16* kd = ring + stage * 2 * S::kTileElems;
    Bf16* vd = kd + S::kTileElems;
    #pragma unroll
    for (int e = lane; e < kKeys * kWords; e += 32) {
      const int tok = e / kWords, c = e % kWords;
      const int64_t t = t0 + tok;
      const bool inside = t < end;
      int64_t at = 0;
      if (inside) {
        const int tt = static_cast<int>(t);
        const int page = page_pow2 ? tt >> page_shift : tt / page_size;
        const int64_t slot = static_cast<int64_t>(pages[page]) * page_size + (tt - page * page_size);
        at = (slot * p.num_kv_heads + kv) * kHeadDim + c * 8;
      }
      cp_async16(kd + tok * kLd + c * 8, p.k_cache + at, inside);
      cp_async16(vd + tok * kLd + c * 8, p.v_cache + at, inside);
    }
    cp_async_commit();
  };
  #pragma unroll
  for (int st = 0; st < kStages - 1; ++st) {
    if (st < my_tiles) {
      load(st, st);
    } else {
      cp_async_commit();
    }
  }
  // Q as A fragments, one per 16 dimensions: row g is query head kv * group + g.
  uint32_t qa[kHeadDim / 16][4];
  {
    const int64_t q_stride = p.q_stride > 0 ? p.q_stride : p.num_q_heads * kHeadDim;
    const Bf16* q = p.q + row * q_stride + (kv * group + g) * kHeadDim + 2 * qd;
    #pragma unroll
    for (int kk = 0; kk < kHeadDim / 16; ++kk) {
      qa[kk][0] = g < group ? *reinterpret_cast<const uint32_t*>(q + kk * 16) : 0u;
      qa[kk][1] = 0u;
      qa[kk][2] = g < group ? *reinterpret_cast<const uint32_t*>(q + kk * 16 + 8) : 0u;
      qa[kk][3] = 0u;
    }
  }
  float o[kHeadDim / 2];
  #pragma unroll
  for (int i = 0; i < kHeadDim / 2; ++i) o[i] = 0.0f;
  float m = -INFINITY, l = 0.0f;  // row g's running max (raw logits) and sum of weights
  const float scale_log2 = p.scale * 1.4426950408889634f;
  for (int64_t i = 0; i < my_tiles; ++i) {
    const int stage = static_cast<int>(i % kStages);
    cp_async_wait<kStages - 2>();
    __syncwarp();  // every lane's copies of this tile landed; the previous buffer is read
    if (i + kStages - 1 < my_tiles) {
      load(i + kStages - 1, static_cast<int>((i + kStages - 1) % kStages));
    } else {
      cp_async_commit();
    }
    const Bf16* k_s = ring + stage * 2 * S::kTileElems;
    const Bf16* v_s = k_s + S::kTileElems;
    const int64_t t0 = begin + (warp + i * kWarps) * kKeys;
    const int n = static_cast<int>(end - t0 < kKeys ? end - t0 : kKeys);
    // S = Q·Kᵀ: two blocks of 8 keys; one ldmatrix gives two 16-dimension steps.
    float sc[8];
    #pragma unroll
    for (int j = 0; j < 2; ++j) {
      sc[4 * j] = sc[4 * j + 1] = sc[4 * j + 2] = sc[4 * j + 3] = 0.0f;
      const Bf16* key = k_s + (j * 8 + (lane & 7)) * kLd + (lane >> 3) * 8;
      #pragma unroll
      for (int kk = 0; kk < kHeadDim / 16; kk += 2) {
        uint32_t b[4];
        ldmatrix_x4(b, key + kk * 16);
        mma_16816(sc, 4 * j, qa[kk], b[0], b[1]);
        mma_16816(sc, 4 * j, qa[kk + 1], b[2], b[3]);
      }
    }
    // Row g holds keys 2qd, 2qd + 1 (sc[0], sc[1]) and 8 + 2qd, 9 + 2qd (sc[4], sc[5]).
    float x[4] = {sc[0], sc[1], sc[4], sc[5]};
    #pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int key = (e >> 1) * 8 + 2 * qd + (e & 1);
      if (key >= n) x[e] = -INFINITY;
    }
    float tmax = fmaxf(fmaxf(x[0], x[1]), fmaxf(x[2], x[3]));
    tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, 1));
    tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, 2));
    const float m_new = fmaxf(m, tmax);  // finite: the tile has a key
    const float alpha = fast_exp2((m - m_new) * scale_log2);  // 0 while m = -inf
    const float m_scaled = m_new * scale_log2;
    float w[4];
    #pragma unroll
    for (int e = 0; e < 4; ++e) w[e] = fast_exp2(fmaf(x[e], scale_log2, -m_scaled));
    float sum = (w[0] + w[1]) + (w[2] + w[3]);
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    l = l * alpha + sum;
    m = m_new;
    const uint32_t pa[4] = {pack_bf16(w[0], w[1]), 0u, pack_bf16(w[2], w[3]), 0u};
    if (__any_sync(0xffffffffu, alpha != 1.0f)) {
      #pragma unroll
      for (int nb = 0; nb < kHeadDim / 8; ++nb) {
        o[4 * nb] *= alpha;
        o[4 * nb + 1] *= alpha;
      }
    }
    // O += P·V: B fragments from a transposing ldmatrix of V (keys 0-15, 16 dimensions).
    const Bf16* vrow = v_s + (((lane >> 3) & 1) * 8 + (lane & 7)) * kLd + (lane >> 4) * 8;
    #pragma unroll
    for (int nb = 0; nb < kHeadDim / 8; nb += 2) {
      uint32_t b[4];
      ldmatrix_x4_trans(b, vrow + nb * 8);
      mma_16816(o, 4 * nb, pa, b[0], b[1]);
      mma_16816(o, 4 * (nb + 1), pa, b[2], b[3]);
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // the rings are free: they hold the warps' states now
  float* part = reinterpret_cast<float*>(dyn);  // [kWarps][8 rows][kHeadDim]
  float* ml = part + kWarps * 8 * kHeadDim;     // [kWarps][8 rows][m, l]
  if (g < group) {
    float* dst = part + (warp * 8 + g) * kHeadDim + 2 * qd;
    #pragma unroll
    for (int nb = 0; nb < kHeadDim / 8; ++nb) {
      dst[nb * 8] = o[4 * nb];
      dst[nb * 8 + 1] = o[4 * nb + 1];
    }
    if (qd == 0) {
      ml[(warp * 8 + g) * 2] = m;
      ml[(warp * 8 + g) * 2 + 1] = l;
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < group * kHeadDim; i += kThreads) {
    const int h = i / kHeadDim, d = i % kHeadDim;
    float big = -INFINITY;
    #pragma unroll
    for (int w2 = 0; w2 < kWarps; ++w2) big = fmaxf(big, ml[(w2 * 8 + h) * 2]);
    float num = 0.0f, den = 0.0f;
    #pragma unroll
    for (int w2 = 0; w2 < kWarps; ++w2) {
      const float mw = ml[(w2 * 8 + h) * 2];
      if (mw == -INFINITY) continue;  // a warp without tiles
      const float f = fast_exp2((mw - big) * scale_log2);
      num += part[(w2 * 8 + h) * kHeadDim + d] * f;
      den += ml[(w2 * 8 + h) * 2 + 1] * f;
    }
    if constexpr (!kPieces) {
      p.out[(row * p.num_q_heads + kv * group + h) * kHeadDim + d] = __bfloat16_as_ushort(__float2bfloat16_rn(num / den));
    } else {
      const int64_t qh = s * p.num_q_heads + kv * group + h;
      float* piece = p.workspace + (qh * p.max_splits + blockIdx.z) * (kHeadDim + 2);
      piece[d] = num;
      if (d == 0) {
        piece[kHeadDim] = big * p.scale;  // the merge's units: scaled logits
        piece[kHeadDim + 1] = den;
      }
    }
  }
}

// One block per (query head, sequence): the pieces' states merged into the output.
template <int kHeadDim>
__global__ void __launch_bounds__(kHeadDim) merge_pieces_kernel(DecodeAttentionParams p) {
  pdl_wait();
  const int64_t qh = static_cast<int64_t>(blockIdx.y) * p.num_q_heads + blockIdx.x;
  const int64_t row = p.rows ? p.rows[blockIdx.y] : blockIdx.y;
  const int64_t len = p.seq_lens[row];
  const int64_t lo = p.sliding_window > 0 && len > p.sliding_window ? len - p.sliding_window : 0;
  const int64_t num_pieces = (len - lo + p.split_tokens - 1) / p.split_tokens;
  const float* pieces = p.workspace + qh * p.max_splits * (kHeadDim + 2);
  // The pieces' maxima read side by side (one thread each), then each thread's sums over
  // the pieces with their loads batched: not a chain of dependent round trips per piece.
  float big = -FLT_MAX;
  for (int64_t k = threadIdx.x; k < num_pieces; k += kHeadDim) big = fmaxf(big, pieces[k * (kHeadDim + 2) + kHeadDim]);
  for (int o = 16; o > 0; o >>= 1) big = fmaxf(big, __shfl_xor_sync(0xffffffffu, big, o));
  __shared__ float warp_max[kHeadDim / 32];
  if ((threadIdx.x & 31) == 0) warp_max[threadIdx.x >> 5] = big;
  __syncthreads();
  #pragma unroll
  for (int w = 0; w < kHeadDim / 32; ++w) big = fmaxf(big, warp_max[w]);
  float num = 0.0f, den = 0.0f;
  #pragma unroll 8
  for (int64_t k = 0; k < num_pieces; ++k) {
    const float* piece = pieces + k * (kHeadDim + 2);
    const float f = __expf(piece[kHeadDim] - big);
    num += piece[threadIdx.x] * f;
    den += piece[kHeadDim + 1] * f;
  }
  p.out[(row * p.num_q_heads + blockIdx.x) * kHeadDim + threadIdx.x] =
      __bfloat16_as_ushort(__float2bfloat16_rn(num / den));
}

template <int kHeadDim>
void launch_for(const DecodeAttentionParams& p, Stream stream) {
  const bool split = p.split_tokens > 0 && p.max_splits > 1;
  const dim3 grid(static_cast<unsigned>(p.num_kv_heads), static_cast<unsigned>(p.num_seqs),
                  static_cast<unsigned>(split ? p.max_splits : 1));
  constexpr int kBytes = mma_decode::Shape<kHeadDim>::kBytes;
  static const bool attributes = [] {
    cudaFuncSetAttribute(decode_attention_kernel<kHeadDim, true>, cudaFuncAttributeMaxDynamicSharedMemorySize, kBytes);
    cudaFuncSetAttribute(decode_attention_kernel<kHeadDim, false>, cudaFuncAttributeMaxDynamicSharedMemorySize, kBytes);
    return true;
  }();
  (void)attributes;
  auto kernel = split ? decode_attention_kernel<kHeadDim, true> : decode_attention_kernel<kHeadDim, false>;
  if (launch_pdl(kernel, grid, kThreads, kBytes, stream, p) != cudaSuccess) return;
  if (split) {
    launch_pdl(merge_pieces_kernel<kHeadDim>, dim3(static_cast<unsigned>(p.num_q_heads), static_cast<unsigned>(p.num_seqs)),
               kHeadDim, 0, stream, p);
  }
}

}  // namespace

namespace launch {

const char* decode_attention(const DecodeAttentionParams& p, Stream stream) {
  if (p.head_dim == 64) {
    launch_for<64>(p, stream);
  } else {
    launch_for<128>(p, stream);
  }
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

}  // namespace launch

}  // namespace tessera::kernels::cuda
