#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>

#include "kernels/cuda/cp_async.cuh"
#include "kernels/cuda/mma.cuh"
#include "kernels/cuda/prefill_attention_params.h"
#include "kernels/cuda/wgmma.cuh"

namespace tessera::kernels::cuda {

namespace {

using bf16 = __nv_bfloat16;

constexpr int kRows = kPrefillTileRows;  // query rows per block
constexpr int kKeys = 128;               // keys per K/V tile
constexpr int kWarps = 8;                // each owns 16 query rows
constexpr int kThreads = kWarps * 32;
static_assert(kRows == kWarps * 16, "one 16-row MMA strip per warp");

// Shared memory: the Q tile and two K and two V tiles (bf16; the next pair loads while
// this one is used), rows padded by 8 elements so the 32-bit fragment loads of a warp hit
// 32 different banks.
template <int D>
struct Layout {
  static constexpr int kLd = D + 8;  // bf16 elements per row
  static constexpr int kTile = kKeys * kLd;  // elements of one K or V tile
  static constexpr int kQ = 0;
  static constexpr int kK = kQ + kRows * kLd * 2;  // K tiles 0 and 1
  static constexpr int kV = kK + 2 * kTile * 2;    // V tiles 0 and 1
  static constexpr int kBytes = kV + 2 * kTile * 2;
};

// What both kernels share. Fragment layout of an m16n8k16 accumulator (also wgmma's, per
// warp; g = lane / 4, q = lane % 4): a thread holds rows g and g + 8 of its warp's 16-row
// strip at columns 2q, 2q + 1 of each 8-column block j, as acc[4j + 0, 1] (row g) and
// acc[4j + 2, 3] (row g + 8). S over a K/V tile is laid out that way (columns = keys), and
// so is O (columns = dimensions).

// Where a tile's keys live in the paged cache, and which keys its rows may attend to.
struct TileKeys {
  const int32_t* pages;  // the sequence's block-table row
  int page_size, page_shift;
  bool page_pow2;
  int64_t hi, lo;  // keys [lo, hi) can matter to some row of the tile

  __device__ TileKeys(const PrefillAttentionParams& p, const PrefillTile& tile) {
    pages = p.block_tables + static_cast<int64_t>(tile.table_row) * p.max_pages_per_seq;
    page_size = static_cast<int>(p.page_size);
    // Page arithmetic by shifts when the page size is a power of two (it always is in
    // practice): a 32-bit division is ~20 instructions, once per 16 bytes loaded.
    page_shift = __ffs(page_size) - 1;
    page_pow2 = (page_size & (page_size - 1)) == 0;
    hi = tile.first_pos + tile.num_rows;
    lo = p.sliding_window > 0 && tile.first_pos + 1 > p.sliding_window ? tile.first_pos + 1 - p.sliding_window : 0;
  }
  // Element offset of 16-byte column c of key t (t < hi) for kv_head in the K or V cache.
  __device__ __forceinline__ int64_t offset(const PrefillAttentionParams& p, int kv_head, int64_t t, int c, int d) const {
    const int tt = static_cast<int>(t);  // positions fit in int32 (the context is at most 2^31)
    const int page = page_pow2 ? tt >> page_shift : tt / page_size;
    const int64_t slot = static_cast<int64_t>(pages[page]) * page_size + (tt - page * page_size);
    return (slot * p.num_kv_heads + kv_head) * d + c * 8;
  }
};

// Walks a tile's keys [lo, hi) in kKeys steps over two K/V buffers: load(k0, buffer) starts
// the asynchronous copy of a K/V tile (one cp.async group), use(k0, buffer) runs once it has
// landed (the next tile streams in meanwhile) and must end with a barrier, which releases
// the buffer for the copy after next.
template <class Load, class Use>
__device__ __forceinline__ void for_each_kv_tile(const TileKeys& keys, Load load, Use use) {
  const int64_t first_key = keys.lo / kKeys * kKeys;
  if (first_key < keys.hi) load(first_key, 0);
  int buffer = 0;
  for (int64_t k0 = first_key; k0 < keys.hi; k0 += kKeys, buffer ^= 1) {
    if (k0 + kKeys < keys.hi) {
      load(k0 + kKeys, buffer ^ 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    use(k0, buffer);
  }
}

// The online softmax of this thread's two query rows (tile rows r0 and r0 + 8).
struct RowSoftmax {
  float m[2] = {-INFINITY, -INFINITY};  // running max of raw logits (-inf while nothing is attended)
  float l[2] = {0.0f, 0.0f};            // running sum of weights; the four lanes of a quad agree
  int pos[2], row_lo[2];                // position (-1: no row, attends to nothing), window start
  int r_local[2];

  __device__ RowSoftmax(const PrefillAttentionParams& p, const PrefillTile& tile, int r0) {
    #pragma unroll
    for (int h = 0; h < 2; ++h) {
      r_local[h] = r0 + 8 * h;
      pos[h] = r_local[h] < tile.num_rows ? tile.first_pos + r_local[h] : -1;
      row_lo[h] = p.sliding_window > 0 ? pos[h] + 1 - static_cast<int>(p.sliding_window) : 0;
    }
  }

  // Takes S of keys [k0, k0 + kKeys) (raw logits, this thread's part), masks what the rows
  // may not see with -inf (only tiles that reach past the first row or below a window need
  // it), updates the running max and sum, and leaves P = 2^(s·scale_log2 - m·scale_log2) as
  // bf16 A fragments (two accumulator blocks per 16 keys). Returns in alpha the factors
  // the rows' O must be scaled by first. A row with nothing attended yet has m = -inf: its
  // weights are 2^-inf = 0 against m' = 0.
  template <int kKeys>
  __device__ __forceinline__ void step(float (&s)[kKeys / 2], uint32_t (&pa)[kKeys / 16][4], int64_t k0, bool whole,
                                       int qd, float scale_log2, float (&alpha)[2]) {
    float tile_max[2] = {-INFINITY, -INFINITY};
    #pragma unroll
    for (int j = 0; j < kKeys / 8; ++j) {
      #pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int h = e >> 1;
        if (!whole) {
          const int t = static_cast<int>(k0) + j * 8 + 2 * qd + (e & 1);
          if (t > pos[h] || t < row_lo[h]) s[4 * j + e] = -INFINITY;
        }
        tile_max[h] = fmaxf(tile_max[h], s[4 * j + e]);
      }
    }
    float m_scaled[2];
    #pragma unroll
    for (int h = 0; h < 2; ++h) {
      tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 1));
      tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 2));
      const float m_new = fmaxf(m[h], tile_max[h]);
      alpha[h] = m_new == -INFINITY ? 1.0f : fast_exp2((m[h] - m_new) * scale_log2);
      m_scaled[h] = m_new == -INFINITY ? 0.0f : m_new * scale_log2;
      m[h] = m_new;
    }
    float sum[2] = {0.0f, 0.0f};
    #pragma unroll
    for (int j = 0; j < kKeys / 8; ++j) {
      float w[4];
      #pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int h = e >> 1;
        w[e] = fast_exp2(fmaf(s[4 * j + e], scale_log2, -m_scaled[h]));  // one FFMA + one MUFU per weight
        sum[h] += w[e];
      }
      pa[j / 2][(j & 1) * 2 + 0] = pack_bf16(w[0], w[1]);
      pa[j / 2][(j & 1) * 2 + 1] = pack_bf16(w[2], w[3]);
    }
    #pragma unroll
    for (int h = 0; h < 2; ++h) {
      sum[h] += __shfl_xor_sync(0xffffffffu, sum[h], 1);
      sum[h] += __shfl_xor_sync(0xffffffffu, sum[h], 2);
      l[h] = l[h] * alpha[h] + sum[h];
    }
  }

  // O *= alpha per row. Once the rows' maxima settle (most tiles of a long sequence), no row
  // of the warp rescales: the multiplies are skipped.
  template <int N>
  __device__ __forceinline__ static void rescale(float (&o)[N], const float (&alpha)[2]) {
    if (!__any_sync(0xffffffffu, alpha[0] != 1.0f || alpha[1] != 1.0f)) return;
    #pragma unroll
    for (int n = 0; n < N / 4; ++n) {
      o[4 * n + 0] *= alpha[0];
      o[4 * n + 1] *= alpha[0];
      o[4 * n + 2] *= alpha[1];
      o[4 * n + 3] *= alpha[1];
    }
  }

  // O / l of both rows to out, two dimensions per 32-bit store.
  template <int D>
  __device__ __forceinline__ void store(const float (&o)[D / 2], const PrefillAttentionParams& p,
                                        const PrefillTile& tile, int head, int qd) const {
    #pragma unroll
    for (int h = 0; h < 2; ++h) {
      if (pos[h] < 0) continue;
      const float inv = 1.0f / l[h];
      Bf16* out = p.out + (tile.row_begin + r_local[h]) * (p.num_q_heads * D) + head * D + 2 * qd;
      #pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        *reinterpret_cast<uint32_t*>(out + n * 8) = pack_bf16(o[4 * n + 2 * h] * inv, o[4 * n + 2 * h + 1] * inv);
      }
    }
  }
};

// Row r of the tile's Q for `head` as 16-byte word c (zeros past the tile's rows).
__device__ __forceinline__ uint4 q_word(const PrefillAttentionParams& p, const PrefillTile& tile, int head, int d,
                                        int r, int c) {
  if (r >= tile.num_rows) return make_uint4(0, 0, 0, 0);
  const int64_t q_stride = p.q_stride > 0 ? p.q_stride : p.num_q_heads * d;
  return *reinterpret_cast<const uint4*>(p.q + (tile.row_begin + r) * q_stride + head * d + c * 8);
}

// Flash-attention-2 with the tile in registers (mma.sync; head_dim 64, and any GPU). Each
// warp owns 16 query rows: S = Q·Kᵀ for kKeys keys is kKeys / 8 accumulator blocks, whose
// softmax weights are already laid out as the A fragments of P·V.
template <int D>
__global__ void __launch_bounds__(kThreads) prefill_attention_kernel(PrefillAttentionParams p) {
  using L = Layout<D>;
  constexpr int kLd = L::kLd;
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* q_s = reinterpret_cast<bf16*>(smem + L::kQ);
  bf16* k_tiles = reinterpret_cast<bf16*>(smem + L::kK);
  bf16* v_tiles = reinterpret_cast<bf16*>(smem + L::kV);

  // The last tiles of a sequence attend to the most keys: start them first, so the short
  // ones fill in behind instead of leaving a long tail.
  const PrefillTile tile = p.tiles[p.num_tiles - 1 - blockIdx.x];
  const int head = blockIdx.y;
  const int kv_head = head / static_cast<int>(p.num_q_heads / p.num_kv_heads);
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int g = lane >> 2, qd = lane & 3;
  constexpr int kWords = D / 8;  // 16-byte words per row

  for (int i = threadIdx.x; i < kRows * kWords; i += kThreads) {
    const int r = i / kWords, c = i % kWords;
    *reinterpret_cast<uint4*>(q_s + r * kLd + c * 8) = q_word(p, tile, head, D, r, c);
  }
  __syncthreads();
  // This warp's Q rows as A fragments, one per 16 dimensions.
  uint32_t qa[D / 16][4];
  {
    const bf16* rows = q_s + (warp * 16 + g) * kLd + 2 * qd;
    #pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      qa[kk][0] = *reinterpret_cast<const uint32_t*>(rows + kk * 16);
      qa[kk][1] = *reinterpret_cast<const uint32_t*>(rows + 8 * kLd + kk * 16);
      qa[kk][2] = *reinterpret_cast<const uint32_t*>(rows + kk * 16 + 8);
      qa[kk][3] = *reinterpret_cast<const uint32_t*>(rows + 8 * kLd + kk * 16 + 8);
    }
  }
  float o[D / 2];
  #pragma unroll
  for (int i = 0; i < D / 2; ++i) o[i] = 0.0f;
  RowSoftmax rows(p, tile, warp * 16 + g);
  const float scale_log2 = p.scale * 1.4426950408889634f;  // exp(x) = exp2(x · log2 e)
  const TileKeys keys(p, tile);
  // Gathers keys [k0, k0 + kKeys) of the sequence's pages into K/V tile `buffer` (zeros
  // past hi), asynchronously.
  auto load_tile = [&](int64_t k0, int buffer) {
    bf16* k_dst = k_tiles + buffer * L::kTile;
    bf16* v_dst = v_tiles + buffer * L::kTile;
    // Thread i copies 16-byte column i % kWords of keys i / kWords, + kThreads / kWords, ...
    const int c = threadIdx.x % kWords;
    for (int j = threadIdx.x / kWords; j < kKeys; j += kThreads / kWords) {
      const bool inside = k0 + j < keys.hi;
      const int64_t at = inside ? keys.offset(p, kv_head, k0 + j, c, D) : 0;
      cp_async16(k_dst + j * kLd + c * 8, p.k_cache + at, inside);
      cp_async16(v_dst + j * kLd + c * 8, p.v_cache + at, inside);
    }
    cp_async_commit();
  };
  for_each_kv_tile(keys, load_tile, [&](int64_t k0, int buffer) {
    __syncthreads();
    const bf16* k_s = k_tiles + buffer * L::kTile;
    const bf16* v_s = v_tiles + buffer * L::kTile;

    // S = Q·Kᵀ: kKeys / 8 accumulator blocks of 8 keys each. One ldmatrix gives the B
    // fragments of two 16-dimension steps: matrices (keys j*8.., dims kk*16 + 0, 8, 16, 24 ..).
    float s[kKeys / 2];
    #pragma unroll
    for (int j = 0; j < kKeys / 8; ++j) {
      s[4 * j] = s[4 * j + 1] = s[4 * j + 2] = s[4 * j + 3] = 0.0f;
      const bf16* key = k_s + (j * 8 + (lane & 7)) * kLd + (lane >> 3) * 8;
      #pragma unroll
      for (int kk = 0; kk < D / 16; kk += 2) {
        uint32_t b[4];
        ldmatrix_x4(b, key + kk * 16);
        mma_16816(s, 4 * j, qa[kk], b[0], b[1]);
        mma_16816(s, 4 * j, qa[kk + 1], b[2], b[3]);
      }
    }
    uint32_t pa[kKeys / 16][4];
    float alpha[2];
    rows.step<kKeys>(s, pa, k0, k0 + kKeys - 1 <= tile.first_pos && p.sliding_window == 0, qd, scale_log2, alpha);
    RowSoftmax::rescale(o, alpha);
    // O += P·V: B fragments are V[keys 2q, 2q + 1 (+ 8)][dimension g], which a transposing
    // ldmatrix of (keys kk*16 + 0 or 8.., dims n*8 or n*8 + 8..) delivers for two n at once.
    #pragma unroll
    for (int kk = 0; kk < kKeys / 16; ++kk) {
      const bf16* vrow = v_s + (kk * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * kLd + (lane >> 4) * 8;
      #pragma unroll
      for (int n = 0; n < D / 8; n += 2) {
        uint32_t b[4];
        ldmatrix_x4_trans(b, vrow + n * 8);
        mma_16816(o, 4 * n, pa[kk], b[0], b[1]);
        mma_16816(o, 4 * (n + 1), pa[kk], b[2], b[3]);
      }
    }
    __syncthreads();  // every warp is done with this buffer before it is refilled
  });
  rows.store<D>(o, p, tile, head, qd);
}

// Head dimension 128 on Hopper: the same flash-attention-2 walk over 128-key tiles, with
// the two products on the warpgroup tensor-core path (wgmma, kernels/cuda/wgmma.cuh)
// instead of mma.sync: one instruction per 64×128×16 block where mma.sync takes 64, and
// no ldmatrix (the tensor cores read Q, K and V from shared memory themselves). Two
// warpgroups of 64 query rows share each K/V tile; S = Q·Kᵀ reads Q and K from shared
// memory, the softmax runs in registers, and O += P·V takes P from registers (the
// accumulator layout of S is the A-fragment layout of P) and V transposed from shared
// memory. Tiles are stored 128-byte swizzled, so no padding.
constexpr int kWgThreads = 256;  // two warpgroups
struct WgLayout {
  static constexpr int kD = 128;
  static constexpr int kRowBytes = kD * 2;               // two 128-byte panels per row
  static constexpr int kTileBytes = kKeys * kRowBytes;  // one K or V tile
  static constexpr int kQ = 0;
  static constexpr int kK = kQ + kRows * kRowBytes;  // K tiles 0 and 1
  static constexpr int kV = kK + 2 * kTileBytes;     // V tiles 0 and 1
  static constexpr int kBytes = kV + 2 * kTileBytes + 1024;  // + slack to align the start to 1024 bytes
};

__global__ void __launch_bounds__(kWgThreads, 1) prefill_attention_wgmma_kernel(PrefillAttentionParams p) {
  using L = WgLayout;
  constexpr int D = L::kD;
  constexpr int kChunks = D / 8;  // 16-byte chunks per row
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  unsigned char* smem = smem_raw + ((1024 - (wgmma::smem_address(smem_raw) & 1023)) & 1023);
  unsigned char* q_s = smem + L::kQ;

  const PrefillTile tile = p.tiles[p.num_tiles - 1 - blockIdx.x];  // longest tiles first
  const int head = blockIdx.y;
  const int kv_head = head / static_cast<int>(p.num_q_heads / p.num_kv_heads);
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int g = lane >> 2, qd = lane & 3;
  const int group = warp >> 2;  // warpgroup: query rows 64·group ..

  for (int i = threadIdx.x; i < kRows * kChunks; i += kWgThreads) {
    const int r = i / kChunks, c = i % kChunks;
    *reinterpret_cast<uint4*>(q_s + wgmma::chunk_offset(kRows, r, c)) = q_word(p, tile, head, D, r, c);
  }
  wgmma::fence_shared_for_async();  // the barrier after the first K/V tile publishes it

  float o[D / 2];  // 64 rows × 128 dimensions over the warpgroup's 128 threads
  #pragma unroll
  for (int i = 0; i < D / 2; ++i) o[i] = 0.0f;
  RowSoftmax rows(p, tile, group * 64 + (warp & 3) * 16 + g);
  const float scale_log2 = p.scale * 1.4426950408889634f;
  const TileKeys keys(p, tile);
  auto load_tile = [&](int64_t k0, int buffer) {
    unsigned char* k_dst = smem + L::kK + buffer * L::kTileBytes;
    unsigned char* v_dst = smem + L::kV + buffer * L::kTileBytes;
    const int c = threadIdx.x % kChunks;
    for (int j = threadIdx.x / kChunks; j < kKeys; j += kWgThreads / kChunks) {
      const bool inside = k0 + j < keys.hi;
      const int64_t at = inside ? keys.offset(p, kv_head, k0 + j, c, D) : 0;
      const uint32_t off = wgmma::chunk_offset(kKeys, j, c);
      cp_async16(k_dst + off, p.k_cache + at, inside);
      cp_async16(v_dst + off, p.v_cache + at, inside);
    }
    cp_async_commit();
  };
  const uint32_t q_addr = wgmma::smem_address(q_s) + group * 64 * 128;
  for_each_kv_tile(keys, load_tile, [&](int64_t k0, int buffer) {
    wgmma::fence_shared_for_async();
    __syncthreads();
    const uint32_t k_addr = wgmma::smem_address(smem + L::kK + buffer * L::kTileBytes);
    const uint32_t v_addr = wgmma::smem_address(smem + L::kV + buffer * L::kTileBytes);

    // S = Q·Kᵀ over the 8 16-dimension steps (K-major Q and K: panel kk / 4, 32 bytes a step).
    float s[kKeys / 2];
    wgmma::fence();
    #pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const uint32_t step = (kk & 3) * 32;
      const uint64_t a = wgmma::descriptor(q_addr + (kk >> 2) * (kRows * 128) + step, 16, 1024);
      const uint64_t b = wgmma::descriptor(k_addr + (kk >> 2) * (kKeys * 128) + step, 16, 1024);
      wgmma::m64n128k16_ss(s, a, b, kk > 0);
    }
    wgmma::commit();
    wgmma::wait<0>();

    uint32_t pa[kKeys / 16][4];
    float alpha[2];
    rows.step<kKeys>(s, pa, k0, k0 + kKeys - 1 <= tile.first_pos && p.sliding_window == 0, qd, scale_log2, alpha);
    RowSoftmax::rescale(o, alpha);
    // O += P·V over the 8 16-key steps (V MN-major: LBO = the panel stride, 16 keys = 2048 bytes a step).
    wgmma::fence();
    #pragma unroll
    for (int kk = 0; kk < kKeys / 16; ++kk) {
      const uint64_t b = wgmma::descriptor(v_addr + kk * 16 * 128, kKeys * 128, 1024);
      wgmma::m64n128k16_rs_mn(o, pa[kk], b);
    }
    wgmma::commit();
    wgmma::wait<0>();
    __syncthreads();  // both warpgroups are done with this buffer before it is refilled
  });
  rows.store<D>(o, p, tile, head, qd);
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

const char* launch_wgmma(const PrefillAttentionParams& p, Stream stream) {
  static const cudaError_t configured = cudaFuncSetAttribute(
      prefill_attention_wgmma_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, WgLayout::kBytes);
  if (configured != cudaSuccess) return cudaGetErrorString(configured);
  const dim3 grid(static_cast<unsigned>(p.num_tiles), static_cast<unsigned>(p.num_q_heads));
  prefill_attention_wgmma_kernel<<<grid, kWgThreads, WgLayout::kBytes, stream>>>(p);
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

}  // namespace

namespace launch {

const char* prefill_attention(const PrefillAttentionParams& p, Stream stream) {
  return p.head_dim == 64 ? launch_for<64>(p, stream) : launch_wgmma(p, stream);
}

}  // namespace launch

}  // namespace tessera::kernels::cuda
