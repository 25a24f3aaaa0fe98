#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "kernels/cuda/bf16.cuh"
#include "kernels/cuda/cp_async.cuh"
#include "kernels/cuda/pdl.cuh"

#include <cfloat>

#include "kernels/cuda/decode_attention_params.h"

namespace tessera::kernels::cuda {

namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxGroup = 8;
constexpr int kChunk = 256;  // tokens whose logits sit in shared memory at once

using bf16::unpack2;

// Block (kv head, sequence, piece): tokens [begin, end) of the sequence. Shared state per
// query head of the group: the running maximum m, the running sum l, and the chunk's
// logits turned into weights. Each thread keeps eight output dimensions of every head.
// At most 128 registers, so that four blocks fit on a multiprocessor: with three (150
// registers, once the row list came in) batch-128 decode at context 1024 ran 20 ms a step
// on the H100, 16.2 with the cap.
// kPieces: the sequence is split into pieces (p.split_tokens, p.max_splits), each block
// writing its piece's softmax state to the workspace for merge_pieces_kernel; otherwise
// each block writes its heads' output. (Merging in the last block of each sequence
// instead, counted with atomics, was 0.15-0.2 ms a step slower at batch 1 on the H100:
// its merge is one block's serial chain where the merge kernel spreads it over heads.)
template <int kHeadDim, bool kPieces, int kGroup>
__global__ void __launch_bounds__(kThreads, kGroup <= 4 ? 5 : 4) decode_attention_kernel(DecodeAttentionParams p) {
  pdl_wait();
  constexpr int kLanesPerToken = kHeadDim / 32;            // 32 dimensions (64 bytes) per lane
  constexpr int kTokensPerWarp = 32 / kLanesPerToken;      // logits of this many tokens per warp step
  constexpr int kDimsPerThread = 8;                        // V: one 16-byte load per row and thread
  constexpr int kThreadsPerRow = kHeadDim / kDimsPerThread;
  constexpr int kRowStreams = kThreads / kThreadsPerRow;   // V rows summed side by side
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
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int32_t* pages = p.block_tables + (p.table_rows ? p.table_rows[row] : row) * p.max_pages_per_seq;

  // q rows padded by four floats per 32: the lanes of a token read 16-byte pieces 36 floats
  // apart, in different banks.
  __shared__ __align__(16) float q_s[kGroup][kHeadDim + kHeadDim / 8];
  __shared__ float w_s[kGroup][kChunk];  // logits, then weights
  __shared__ float m_s[kGroup], l_s[kGroup], rescale_s[kGroup];
  __shared__ int64_t slot_s[kChunk];
  for (int i = threadIdx.x; i < group * kHeadDim; i += kThreads) {
    const int h = i / kHeadDim;
    const int64_t q_stride = p.q_stride > 0 ? p.q_stride : p.num_q_heads * kHeadDim;
    const Bf16 bits = p.q[row * q_stride + (kv * group + h) * kHeadDim + i % kHeadDim];
    const int d = i % kHeadDim;
    q_s[h][d + (d / 32) * 4] = __bfloat162float(__ushort_as_bfloat16(bits)) * p.scale;
  }
  if (threadIdx.x < kGroup) {
    m_s[threadIdx.x] = -FLT_MAX;
    l_s[threadIdx.x] = 0.0f;
  }
  float acc[kGroup][kDimsPerThread];
  #pragma unroll
  for (int h = 0; h < kGroup; ++h) {
    #pragma unroll
    for (int e = 0; e < kDimsPerThread; ++e) acc[h][e] = 0.0f;
  }
  const int row_stream = threadIdx.x / kThreadsPerRow;
  const int part = threadIdx.x % kThreadsPerRow;

  for (int64_t c0 = begin; c0 < end; c0 += kChunk) {
    const int n = static_cast<int>(end - c0 < kChunk ? end - c0 : kChunk);
    __syncthreads();  // the previous chunk's weights are consumed; q_s and m_s are ready
    for (int i = threadIdx.x; i < n; i += kThreads) {
      const int64_t t = c0 + i;
      const int tt = static_cast<int>(t), ps = static_cast<int>(p.page_size);  // 32-bit division
      slot_s[i] = static_cast<int64_t>(pages[tt / ps]) * ps + tt % ps;
    }
    __syncthreads();
    // Split into pieces (few blocks, each a short chain of round trips), the chunk's V rows
    // are requested into L2 now, so that their loads after the logits and the softmax wait
    // for L2, not for DRAM: batch 1 at context 1024, 5.82 ms a step against 5.85 without.
    // Not with a block per whole sequence: at batch 128 the prefetches cost more than they
    // hide (17.9 ms a step against 16.2 without them, on the H100).
    constexpr int kLinesPerRow = kHeadDim * 2 / 128;
    for (int i = threadIdx.x; kPieces && i < n * kLinesPerRow; i += kThreads) {
      const char* line = reinterpret_cast<const char*>(
          p.v_cache + (slot_s[i / kLinesPerRow] * p.num_kv_heads + kv) * kHeadDim) + (i % kLinesPerRow) * 128;
      asm volatile("prefetch.global.L2 [%0];" ::"l"(line));
    }
    // Logits: kLanesPerToken lanes per token, each with 32 dimensions of its K row.
    const int sub = lane % kLanesPerToken;
    for (int i0 = warp * kTokensPerWarp; i0 < n; i0 += kWarps * kTokensPerWarp) {
      const int i = i0 + lane / kLanesPerToken;
      float k[32];
      if (i < n) {
        const uint4* row = reinterpret_cast<const uint4*>(p.k_cache + (slot_s[i] * p.num_kv_heads + kv) * kHeadDim + sub * 32);
        #pragma unroll
        for (int v = 0; v < 4; ++v) {
          const uint4 w = row[v];
          const uint32_t words[4] = {w.x, w.y, w.z, w.w};
          #pragma unroll
          for (int e = 0; e < 4; ++e) {
            const float2 f = unpack2(words[e]);
            k[v * 8 + e * 2] = f.x;
            k[v * 8 + e * 2 + 1] = f.y;
          }
        }
      } else {
        #pragma unroll
        for (int e = 0; e < 32; ++e) k[e] = 0.0f;
      }
      #pragma unroll
      for (int h = 0; h < kGroup; ++h) {
        if (h >= group) break;
        float dot = 0.0f;
        const float4* qv = reinterpret_cast<const float4*>(&q_s[h][sub * 36]);
        #pragma unroll
        for (int e = 0; e < 8; ++e) {
          const float4 qe = qv[e];
          dot += qe.x * k[4 * e] + qe.y * k[4 * e + 1] + qe.z * k[4 * e + 2] + qe.w * k[4 * e + 3];
        }
        #pragma unroll
        for (int o = kLanesPerToken / 2; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
        if (sub == 0 && i < n) w_s[h][i] = dot;
      }
    }
    __syncthreads();
    // Softmax against the running maximum: one warp per query head.
    for (int h = warp; h < group; h += kWarps) {
      float big = -FLT_MAX;
      for (int i = lane; i < n; i += 32) big = fmaxf(big, w_s[h][i]);
      for (int o = 16; o > 0; o >>= 1) big = fmaxf(big, __shfl_xor_sync(0xffffffffu, big, o));
      const float m_old = m_s[h];
      const float m_new = fmaxf(m_old, big);
      float sum = 0.0f;
      for (int i = lane; i < n; i += 32) {
        const float w = __expf(w_s[h][i] - m_new);
        w_s[h][i] = w;
        sum += w;
      }
      for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
      if (lane == 0) {
        const float r = __expf(m_old - m_new);
        rescale_s[h] = r;
        l_s[h] = l_s[h] * r + sum;
        m_s[h] = m_new;
      }
    }
    __syncthreads();
    // Weighted V rows: kRowStreams rows at a time, two dimensions per thread.
    #pragma unroll
    for (int h = 0; h < kGroup; ++h) {
      if (h >= group) break;
      const float r = rescale_s[h];
      #pragma unroll
      for (int e = 0; e < kDimsPerThread; ++e) acc[h][e] *= r;
    }
    #pragma unroll 4
    for (int i = row_stream; i < n; i += kRowStreams) {
      const uint4 bits = *reinterpret_cast<const uint4*>(p.v_cache + (slot_s[i] * p.num_kv_heads + kv) * kHeadDim +
                                                         part * kDimsPerThread);
      const uint32_t words[4] = {bits.x, bits.y, bits.z, bits.w};
      float v[kDimsPerThread];
      #pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float2 f = unpack2(words[e]);
        v[2 * e] = f.x;
        v[2 * e + 1] = f.y;
      }
      #pragma unroll
      for (int h = 0; h < kGroup; ++h) {
        if (h >= group) break;
        const float w = w_s[h][i];
        #pragma unroll
        for (int e = 0; e < kDimsPerThread; ++e) acc[h][e] += w * v[e];
      }
    }
  }

  // Sum the row streams: first the ones sharing a warp (lanes kThreadsPerRow apart hold the
  // same dimensions), then one partial per warp through shared memory (q_s is free now),
  // with a single barrier instead of one per row stream.
  #pragma unroll
  for (int h = 0; h < kGroup; ++h) {
    if (h >= group) break;
    #pragma unroll
    for (int e = 0; e < kDimsPerThread; ++e) {
      #pragma unroll
      for (int o = kThreadsPerRow; o < 32; o <<= 1) acc[h][e] += __shfl_xor_sync(0xffffffffu, acc[h][e], o);
    }
  }
  __shared__ __align__(16) float warp_sums[kWarps][kGroup][kHeadDim];
  if (lane < kThreadsPerRow) {
    #pragma unroll
    for (int h = 0; h < kGroup; ++h) {
      if (h >= group) break;
      #pragma unroll
      for (int e = 0; e < kDimsPerThread; ++e) warp_sums[warp][h][part * kDimsPerThread + e] = acc[h][e];
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < group * kHeadDim; i += kThreads) {
    const int h = i / kHeadDim, d = i % kHeadDim;
    float sum = 0.0f;
    #pragma unroll
    for (int w = 0; w < kWarps; ++w) sum += warp_sums[w][h][d];
    q_s[h][d] = sum;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < group * kHeadDim; i += kThreads) {
    const int h = i / kHeadDim;
    const int d = i % kHeadDim;
    const int64_t qh = s * p.num_q_heads + kv * group + h;
    if constexpr (!kPieces) {
      const int64_t out_head = row * p.num_q_heads + kv * group + h;
      p.out[out_head * kHeadDim + d] = __bfloat16_as_ushort(__float2bfloat16_rn(q_s[h][d] / l_s[h]));
    } else {
      float* piece = p.workspace + (qh * p.max_splits + blockIdx.z) * (kHeadDim + 2);
      piece[d] = q_s[h][d];
      if (d == 0) {
        piece[kHeadDim] = m_s[h];
        piece[kHeadDim + 1] = l_s[h];
      }
    }
  }
}

// The same work as decode_attention_kernel (block = (kv head, sequence, piece), the same
// outputs), with K and V streamed through shared memory: tiles of kTile tokens copied
// asynchronously kStages - 1 tiles ahead of the one being used, so that the memory system
// always has the next tiles in flight while the block computes logits, the softmax and
// the weighted V rows of the current one.
// - A tile is 32 tokens (head_dim 128) or 64 (head_dim 64): 8 KB of K and 8 KB of V.
// - Logits: kLanesPerToken lanes per token, each taking every kLanesPerToken-th 16-byte
//   piece of the K row; the K tile is stored with those pieces swizzled (XOR by the token's
//   place in its quarter-warp) so that a warp's 16-byte reads hit distinct banks.
// - The softmax of a tile: one warp per query head, a lane per token (two for 64-token tiles).
// - V: 16-byte pieces, eight output dimensions per thread, as in decode_attention_kernel.
namespace tiles {
constexpr int kStages = 4;
template <int kHeadDim>
struct Shape {
  static constexpr int kLanesPerToken = kHeadDim / 32;
  static constexpr int kTokensPerWarp = 32 / kLanesPerToken;
  static constexpr int kTile = kWarps * kTokensPerWarp;  // 32 or 64 tokens
  static constexpr int kPieces = kHeadDim / 8;           // 16-byte pieces per row
  static constexpr int kPiecesPerLane = kPieces / kLanesPerToken;  // 4
  static constexpr int kTileElems = kTile * kHeadDim;
  static constexpr int kBytes = 2 * kStages * kTileElems * 2;  // K and V stages
};
}  // namespace tiles

template <int kHeadDim, bool kPieces, int kGroup>
__global__ void __launch_bounds__(kThreads, 3) decode_attention_tiles_kernel(DecodeAttentionParams p) {
  using S = tiles::Shape<kHeadDim>;
  constexpr int kTile = S::kTile;
  constexpr int kStages = tiles::kStages;
  constexpr int kDimsPerThread = 8;
  constexpr int kThreadsPerRow = kHeadDim / kDimsPerThread;
  constexpr int kRowStreams = kThreads / kThreadsPerRow;
  constexpr int kTokensPerQuarter = 8 / S::kLanesPerToken;  // tokens of one quarter-warp's reads
  pdl_wait();
  extern __shared__ __align__(16) unsigned char dyn[];
  Bf16* k_tiles = reinterpret_cast<Bf16*>(dyn);
  Bf16* v_tiles = k_tiles + kStages * S::kTileElems;

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
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int32_t* pages = p.block_tables + (p.table_rows ? p.table_rows[row] : row) * p.max_pages_per_seq;
  const int page_size = static_cast<int>(p.page_size);
  const int page_shift = __ffs(page_size) - 1;
  const bool page_pow2 = (page_size & (page_size - 1)) == 0;

  // Starts the copy of the tile at token t0 into stage `stage` (one cp.async group).
  const auto load = [&](int64_t t0, int stage) {
    Bf16* kd = k_tiles + stage * S::kTileElems;
    Bf16* vd = v_tiles + stage * S::kTileElems;
    #pragma unroll
    for (int c = threadIdx.x; c < kTile * S::kPieces; c += kThreads) {
      const int tok = c / S::kPieces, piece = c % S::kPieces;
      const int64_t t = t0 + tok;
      const bool inside = t < end;
      int64_t at = 0;
      if (inside) {
        const int tt = static_cast<int>(t);
        const int page = page_pow2 ? tt >> page_shift : tt / page_size;
        const int64_t slot = static_cast<int64_t>(pages[page]) * page_size + (tt - page * page_size);
        at = (slot * p.num_kv_heads + kv) * kHeadDim + piece * 8;
      }
      const int swizzled = piece ^ ((tok % kTokensPerQuarter) * S::kLanesPerToken);
      cp_async16(kd + tok * kHeadDim + swizzled * 8, p.k_cache + at, inside);
      cp_async16(vd + tok * kHeadDim + piece * 8, p.v_cache + at, inside);
    }
    cp_async_commit();
  };

  __shared__ __align__(16) float q_s[kGroup][kHeadDim];
  __shared__ float w_s[kGroup][kTile];  // logits, then weights
  __shared__ float m_s[kGroup], l_s[kGroup], rescale_s[kGroup];
  const int64_t num_tiles = (end - begin + kTile - 1) / kTile;
  // The first tiles start streaming before q is read.
  #pragma unroll
  for (int st = 0; st < kStages - 1; ++st) {
    if (st < num_tiles) {
      load(begin + st * kTile, st);
    } else {
      cp_async_commit();  // empty groups keep the count uniform
    }
  }
  for (int i = threadIdx.x; i < group * kHeadDim; i += kThreads) {
    const int h = i / kHeadDim;
    const int64_t q_stride = p.q_stride > 0 ? p.q_stride : p.num_q_heads * kHeadDim;
    const Bf16 bits = p.q[row * q_stride + (kv * group + h) * kHeadDim + i % kHeadDim];
    q_s[h][i % kHeadDim] = __bfloat162float(__ushort_as_bfloat16(bits)) * p.scale;
  }
  if (threadIdx.x < kGroup) {
    m_s[threadIdx.x] = -FLT_MAX;
    l_s[threadIdx.x] = 0.0f;
  }
  float acc[kGroup][kDimsPerThread];
  #pragma unroll
  for (int h = 0; h < kGroup; ++h) {
    #pragma unroll
    for (int e = 0; e < kDimsPerThread; ++e) acc[h][e] = 0.0f;
  }
  const int row_stream = threadIdx.x / kThreadsPerRow;
  const int part = threadIdx.x % kThreadsPerRow;
  const int sub = lane % S::kLanesPerToken;
  const int my_tok = warp * S::kTokensPerWarp + lane / S::kLanesPerToken;

  for (int64_t tile = 0; tile < num_tiles; ++tile) {
    const int stage = static_cast<int>(tile % kStages);
    const int64_t t0 = begin + tile * kTile;
    const int n = static_cast<int>(end - t0 < kTile ? end - t0 : kTile);
    cp_async_wait<kStages - 2>();
    __syncthreads();  // this tile has landed for every thread; the previous tile is consumed
    if (tile + kStages - 1 < num_tiles) {
      load(t0 + (kStages - 1) * kTile, static_cast<int>((tile + kStages - 1) % kStages));
    } else {
      cp_async_commit();
    }
    // Logits of token my_tok: piece sub + j * kLanesPerToken of its row, for each j.
    {
      const Bf16* krow = k_tiles + stage * S::kTileElems + my_tok * kHeadDim;
      const int swz = (my_tok % kTokensPerQuarter) * S::kLanesPerToken;
      float k[S::kPiecesPerLane][8];
      #pragma unroll
      for (int j = 0; j < S::kPiecesPerLane; ++j) {
        const int piece = sub + j * S::kLanesPerToken;
        const uint4 w = *reinterpret_cast<const uint4*>(krow + (piece ^ swz) * 8);
        const uint32_t words[4] = {w.x, w.y, w.z, w.w};
        #pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float2 f = unpack2(words[e]);
          k[j][2 * e] = f.x;
          k[j][2 * e + 1] = f.y;
        }
      }
      #pragma unroll
      for (int h = 0; h < kGroup; ++h) {
        if (h >= group) break;
        float dot = 0.0f;
        #pragma unroll
        for (int j = 0; j < S::kPiecesPerLane; ++j) {
          const int piece = sub + j * S::kLanesPerToken;
          const float4 q0 = *reinterpret_cast<const float4*>(&q_s[h][piece * 8]);
          const float4 q1 = *reinterpret_cast<const float4*>(&q_s[h][piece * 8 + 4]);
          dot += q0.x * k[j][0] + q0.y * k[j][1] + q0.z * k[j][2] + q0.w * k[j][3] + q1.x * k[j][4] +
                 q1.y * k[j][5] + q1.z * k[j][6] + q1.w * k[j][7];
        }
        #pragma unroll
        for (int o = S::kLanesPerToken / 2; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
        if (sub == 0) w_s[h][my_tok] = my_tok < n ? dot : -FLT_MAX;
      }
    }
    __syncthreads();
    // Softmax of the tile against the running maximum: one warp per query head.
    for (int h = warp; h < group; h += kWarps) {
      constexpr int kPer = kTile / 32;
      float x[kPer];
      float big = -FLT_MAX;
      #pragma unroll
      for (int j = 0; j < kPer; ++j) {
        x[j] = w_s[h][lane + 32 * j];
        big = fmaxf(big, x[j]);
      }
      for (int o = 16; o > 0; o >>= 1) big = fmaxf(big, __shfl_xor_sync(0xffffffffu, big, o));
      const float m_old = m_s[h];
      const float m_new = fmaxf(m_old, big);
      float sum = 0.0f;
      #pragma unroll
      for (int j = 0; j < kPer; ++j) {
        const float w = lane + 32 * j < n ? __expf(x[j] - m_new) : 0.0f;
        w_s[h][lane + 32 * j] = w;
        sum += w;
      }
      for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
      if (lane == 0) {
        const float r = __expf(m_old - m_new);
        rescale_s[h] = r;
        l_s[h] = l_s[h] * r + sum;
        m_s[h] = m_new;
      }
    }
    __syncthreads();
    #pragma unroll
    for (int h = 0; h < kGroup; ++h) {
      if (h >= group) break;
      const float r = rescale_s[h];
      #pragma unroll
      for (int e = 0; e < kDimsPerThread; ++e) acc[h][e] *= r;
    }
    const Bf16* vt = v_tiles + stage * S::kTileElems + part * kDimsPerThread;
    #pragma unroll 4
    for (int i = row_stream; i < n; i += kRowStreams) {
      const uint4 bits = *reinterpret_cast<const uint4*>(vt + i * kHeadDim);
      const uint32_t words[4] = {bits.x, bits.y, bits.z, bits.w};
      float v[kDimsPerThread];
      #pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float2 f = unpack2(words[e]);
        v[2 * e] = f.x;
        v[2 * e + 1] = f.y;
      }
      #pragma unroll
      for (int h = 0; h < kGroup; ++h) {
        if (h >= group) break;
        const float w = w_s[h][i];
        #pragma unroll
        for (int e = 0; e < kDimsPerThread; ++e) acc[h][e] += w * v[e];
      }
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // every copy landed and every read is done: the stages are free

  // Sum the row streams: lanes kThreadsPerRow apart hold the same dimensions; then one
  // partial per warp in shared memory (over the K/V stages).
  #pragma unroll
  for (int h = 0; h < kGroup; ++h) {
    if (h >= group) break;
    #pragma unroll
    for (int e = 0; e < kDimsPerThread; ++e) {
      #pragma unroll
      for (int o = kThreadsPerRow; o < 32; o <<= 1) acc[h][e] += __shfl_xor_sync(0xffffffffu, acc[h][e], o);
    }
  }
  float* warp_sums = reinterpret_cast<float*>(dyn);  // [kWarps][kGroup][kHeadDim]
  if (lane < kThreadsPerRow) {
    #pragma unroll
    for (int h = 0; h < kGroup; ++h) {
      if (h >= group) break;
      #pragma unroll
      for (int e = 0; e < kDimsPerThread; ++e) {
        warp_sums[(warp * kGroup + h) * kHeadDim + part * kDimsPerThread + e] = acc[h][e];
      }
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < group * kHeadDim; i += kThreads) {
    const int h = i / kHeadDim, d = i % kHeadDim;
    float sum = 0.0f;
    #pragma unroll
    for (int w = 0; w < kWarps; ++w) sum += warp_sums[(w * kGroup + h) * kHeadDim + d];
    const int64_t qh = s * p.num_q_heads + kv * group + h;
    if constexpr (!kPieces) {
      const int64_t out_head = row * p.num_q_heads + kv * group + h;
      p.out[out_head * kHeadDim + d] = __bfloat16_as_ushort(__float2bfloat16_rn(sum / l_s[h]));
    } else {
      float* piece = p.workspace + (qh * p.max_splits + blockIdx.z) * (kHeadDim + 2);
      piece[d] = sum;
      if (d == 0) {
        piece[kHeadDim] = m_s[h];
        piece[kHeadDim + 1] = l_s[h];
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
  const bool four = p.num_q_heads / p.num_kv_heads <= 4;
  // Whole sequences per block with up to 4 query heads per KV head (Llama-3, SmolLM2): an
  // instance with half the accumulators and shared memory fits 5 blocks on a
  // multiprocessor instead of 4. It is taken where that means fewer waves of blocks: on
  // the H100, 143 sequences at context 1024 (1,144 blocks: 3 waves, or 2) went from 20.1 to
  // 16.9 ms a step, while 128 (1,024 blocks: 2 waves either way) ran 3% slower with it.
  auto whole_small = decode_attention_kernel<kHeadDim, false, 4>;
  auto whole_big = decode_attention_kernel<kHeadDim, false, kMaxGroup>;
  auto tiled = split ? (four ? decode_attention_tiles_kernel<kHeadDim, true, 4>
                             : decode_attention_tiles_kernel<kHeadDim, true, kMaxGroup>)
                     : (four ? decode_attention_tiles_kernel<kHeadDim, false, 4>
                             : decode_attention_tiles_kernel<kHeadDim, false, kMaxGroup>);
  constexpr int kTiledBytes = tiles::Shape<kHeadDim>::kBytes;
  struct Residency {
    int sms = 1, small = 1, big = 1, tiled = 1;  // multiprocessors; blocks of each kind on one
  };
  static const Residency resident = [&] {
    Residency r;
    int device = 0;
    cudaGetDevice(&device);
    cudaDeviceGetAttribute(&r.sms, cudaDevAttrMultiProcessorCount, device);
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&r.small, whole_small, kThreads, 0);
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&r.big, whole_big, kThreads, 0);
    for (auto k : {decode_attention_tiles_kernel<kHeadDim, true, 4>, decode_attention_tiles_kernel<kHeadDim, true, kMaxGroup>,
                   decode_attention_tiles_kernel<kHeadDim, false, 4>, decode_attention_tiles_kernel<kHeadDim, false, kMaxGroup>}) {
      cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, kTiledBytes);
    }
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&r.tiled, decode_attention_tiles_kernel<kHeadDim, false, kMaxGroup>,
                                                  kThreads, kTiledBytes);
    cudaGetLastError();  // a failed query leaves the defaults
    r.sms = r.sms > 0 ? r.sms : 1;
    return r;
  }();
  const int64_t blocks = p.num_kv_heads * p.num_seqs * (split ? p.max_splits : 1);
  const auto waves = [&](int per_sm) {
    const int64_t slots = static_cast<int64_t>(per_sm > 0 ? per_sm : 1) * resident.sms;
    return (blocks + slots - 1) / slots;
  };
  // The tiled kernel (3 blocks a multiprocessor) where its blocks fit in one wave: small
  // batches, whose few blocks each stream a long run of tokens. On the H100 at context
  // 420: batch 1, 5.70 ms a step against 5.78; batch 16, 6.96 against 7.19 (10.5 against
  // 11.65 at context 2048). With more waves the kernels above, at 4-5 blocks a
  // multiprocessor, did better: batch 160, 11.5 ms a step against 12.6.
  if (waves(resident.tiled) <= 1) {
    if (launch_pdl(tiled, grid, kThreads, kTiledBytes, stream, p) != cudaSuccess) return;
  } else {
    const bool small_group = !split && four && waves(resident.small) < waves(resident.big);
    auto kernel = split ? decode_attention_kernel<kHeadDim, true, kMaxGroup> : (small_group ? whole_small : whole_big);
    if (launch_pdl(kernel, grid, kThreads, 0, stream, p) != cudaSuccess) return;
  }
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
