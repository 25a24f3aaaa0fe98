// C = A·Wᵀ for 2..256 activation rows (a decode step's products) with the weight streamed
// through shared memory once and multiplied on the Hopper tensor cores (wgmma).
//
// The products are computed transposed, Cᵀ = W·Aᵀ: 128 weight rows (output columns) are
// the M side of two m64 warpgroup instructions, and the step's activation rows, padded to
// a multiple of 64, are their N side. cuBLASLt's tiles put the activation rows on the M
// side, where 160 rows fill two 128-row tiles and the narrow projections (n = 4096..6144)
// make 32..48 blocks for 132 multiprocessors; here a block holds every activation row, so
// the weight crosses the chip once, and the work is cut into one equal range of K tiles
// per multiprocessor (stream-K), so that every multiprocessor streams the weight from the
// first microsecond to the last.
//
// Each block of 256 threads (two warpgroups, 64 weight rows each) runs a ring of
// cp.async stages of 64 K columns: the 128 × 64 weight tile and the rows × 64 activation
// tile, 128-byte swizzled (wgmma.cuh), as many stages as ~210 KiB hold (at most 8). The
// weight loads of the first stages go out before the block waits for the previous kernel
// (programmatic dependent launch: the weights are never written by it).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>

#include "kernels/cuda/bf16.cuh"
#include "kernels/cuda/cp_async.cuh"
#include "kernels/cuda/gemm_params.h"
#include "kernels/cuda/pdl.cuh"
#include "kernels/cuda/wgmma.cuh"

// The 32 accumulators of an m64n64 instruction as read-write asm operands %0 .. %31.
#define TESSERA_WGMMA_ACC32(d) \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
  "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
  "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
  "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])

namespace tessera::kernels::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kWeightRows = 128;                     // output columns a block computes
constexpr int kStageBudget = 210 * 1024;
constexpr int kMaxBlocks = 1024;  // blocks a launch may have (one per multiprocessor)

__device__ __forceinline__ float4 add4(float4 a, float4 b) { return make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w); }

// d += A·B for m64n64k16, A and B K-major swizzled tiles in shared memory.
__device__ __forceinline__ void m64n64k16_ss(float (&d)[32], uint64_t a, uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, "
      "%23, %24, %25, %26, %27, %28, %29, %30, %31}, %32, %33, p, 1, 1, 0, 0;\n}\n"
      : TESSERA_WGMMA_ACC32(d)
      : "l"(a), "l"(b), "r"(1));
}

template <int kChunks, int kPanels, int kPerSm>
struct Shape {
  static constexpr int kRows = 64 * kChunks;  // activation rows a block holds (padded)
  static constexpr int kTileK = 64 * kPanels;  // K columns a stage holds: 128-byte swizzle panels
  static constexpr int kWeightTileBytes = kWeightRows * 128 * kPanels;
  static constexpr int kStageBytes = kWeightTileBytes + kRows * 128 * kPanels;
  static constexpr int kBudget = kStageBudget / kPerSm - (kPerSm - 1) * 6 * 1024;
  static constexpr int kStages = kBudget / kStageBytes < 8 ? kBudget / kStageBytes : 8;
  static constexpr int kSmemBytes = kStages * kStageBytes + 1024;  // + slack to align to 1024
};

// Stream-K: the (column block, K tile) units of the whole product, column block after
// column block, are cut into gridDim.x equal ranges, one a block; a block's range covers
// the end of one column block, whole ones, and the start of another. A whole column
// block is stored at once; a part of one leaves its fp32 sum in the block's slot of
// `partial` (slot 2·b for the block's first part, 2·b + 1 for its last) and counts its
// K tiles in arrivals[column block]; the part that completes the count adds every part's
// slot in block order (the same order every time: no dependence on timing), stores the
// result and sets the count back to zero for the next launch.
template <int kChunks, int kPanels, int kPerSm>
__global__ void __launch_bounds__(kThreads, kPerSm) skinny_gemm_kernel(GemmParams p, float* partial, int* arrivals) {
  using S = Shape<kChunks, kPanels, kPerSm>;
  constexpr int kTileK = S::kTileK, kWeightTileBytes = S::kWeightTileBytes, kRowChunks = 8 * kPanels;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  __shared__ int last_part;
  __shared__ int part_slot[kMaxBlocks];  // slots of the parts of the column block being finished
  unsigned char* smem = smem_raw + ((1024 - (wgmma::smem_address(smem_raw) & 1023)) & 1023);
  const int k_tiles = static_cast<int>(p.k / kTileK);
  const int units = static_cast<int>(p.n / kWeightRows) * k_tiles;
  const int blocks = static_cast<int>(gridDim.x);
  auto range_start = [&](int b) { return static_cast<int>(static_cast<int64_t>(b) * units / blocks); };
  const int u0 = range_start(blockIdx.x);
  const int count = range_start(blockIdx.x + 1) - u0;
  const int tid = threadIdx.x;

  auto load_weights = [&](int q) {
    const int u = u0 + q;
    unsigned char* dst = smem + (q % S::kStages) * S::kStageBytes;
    const Bf16* src = p.w + static_cast<int64_t>(u / k_tiles) * kWeightRows * p.k + (u % k_tiles) * kTileK;
    #pragma unroll
    for (int i = tid; i < kWeightRows * kRowChunks; i += kThreads) {
      const int r = i / kRowChunks, c = i % kRowChunks;
      cp_async16(dst + wgmma::chunk_offset(kWeightRows, r, c), src + r * p.k + c * 8, true);
    }
  };
  auto load_rows = [&](int q) {  // rows past m stay the zeros written below
    unsigned char* dst = smem + (q % S::kStages) * S::kStageBytes + kWeightTileBytes;
    const Bf16* src = p.a + ((u0 + q) % k_tiles) * kTileK;
    for (int i = tid; i < p.m * kRowChunks; i += kThreads) {
      const int r = i / kRowChunks, c = i % kRowChunks;
      cp_async16(dst + wgmma::chunk_offset(S::kRows, r, c), src + r * p.k + c * 8, true);
    }
  };
  for (int st = 0; st < S::kStages; ++st) {
    unsigned char* rows = smem + st * S::kStageBytes + kWeightTileBytes;
    for (int i = static_cast<int>(p.m) * kRowChunks + tid; i < S::kRows * kRowChunks; i += kThreads) {
      *reinterpret_cast<uint4*>(rows + wgmma::chunk_offset(S::kRows, i / kRowChunks, i % kRowChunks)) =
          make_uint4(0, 0, 0, 0);
    }
  }
  wgmma::fence_shared_for_async();  // the first barrier of the loop publishes them

  // Tile q + kAhead refills the stage of tile q − 2: tile q − 1's products may still run
  // while tile q's are issued.
  constexpr int kAhead = S::kStages - 2;
  for (int q = 0; q < kAhead && q < count; ++q) load_weights(q);
  pdl_wait();
  for (int q = 0; q < kAhead; ++q) {
    if (q < count) load_rows(q);
    cp_async_commit();  // one group per tile, empty past the last
  }

  const int group = tid >> 7;  // warpgroup: weight rows 64·group ..
  const int warp = (tid >> 5) & 3, lane = tid & 31;
  const int ldc = static_cast<int>(p.ldc > 0 ? p.ldc : p.n);
  float acc[kChunks][32];
  auto clear = [&] {
    #pragma unroll
    for (int c = 0; c < kChunks; ++c) {
      #pragma unroll
      for (int i = 0; i < 32; ++i) acc[c][i] = 0.0f;
    }
  };
  // Accumulator (c, 4j + i) of warp w in the warpgroup: weight row 16w + g (+ 8 for
  // i >= 2) of the column block, activation row 64c + 8j + 2q + i % 2 (g = lane / 4,
  // q = lane % 4). `store(row, column, value)` for each row below m.
  auto for_each_acc = [&](auto store) {
    const int col = group * 64 + warp * 16 + (lane >> 2);
    #pragma unroll
    for (int c = 0; c < kChunks; ++c) {
      #pragma unroll
      for (int j = 0; j < 8; ++j) {
        #pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int row = 64 * c + 8 * j + 2 * (lane & 3) + (i & 1);
          if (row < p.m) store(row, col + (i >= 2 ? 8 : 0), acc[c][4 * j + i]);
        }
      }
    }
  };
  auto block_of = [&](int u) {  // the block whose range holds unit u
    int b = static_cast<int>(static_cast<int64_t>(u) * blocks / units);
    while (b + 1 < blocks && range_start(b + 1) <= u) ++b;
    while (range_start(b) > u) --b;
    return b;
  };
  const int64_t slot_floats = static_cast<int64_t>(p.m) * kWeightRows;

  clear();
  int part_start = 0;
  for (int q = 0; q < count; ++q) {
    cp_async_wait<kAhead - 1>();  // this thread's copies of tile q landed
    wgmma::fence_shared_for_async();
    __syncthreads();  // everyone's copies of tile q landed; tile q − 2's products are done
    if (q + kAhead < count) {
      load_weights(q + kAhead);
      load_rows(q + kAhead);
    }
    cp_async_commit();
    const uint32_t stage = wgmma::smem_address(smem + (q % S::kStages) * S::kStageBytes);
    const uint32_t w_addr = stage + group * 64 * 128;
    const uint32_t a_addr = stage + kWeightTileBytes;
    wgmma::fence();
    #pragma unroll
    for (int kk = 0; kk < kTileK / 16; ++kk) {
      const uint32_t w_step = (kk >> 2) * (kWeightRows * 128) + (kk & 3) * 32;
      const uint32_t a_step = (kk >> 2) * (S::kRows * 128) + (kk & 3) * 32;
      const uint64_t wd = wgmma::descriptor(w_addr + w_step, 16, 1024);
      #pragma unroll
      for (int c = 0; c < kChunks; ++c) {
        m64n64k16_ss(acc[c], wd, wgmma::descriptor(a_addr + a_step + c * 64 * 128, 16, 1024));
      }
    }
    wgmma::commit();
    wgmma::wait<1>();

    const int u = u0 + q;
    if (u % k_tiles != k_tiles - 1 && q != count - 1) continue;
    // The end of a part: all of column block u / k_tiles, or a piece of it.
    wgmma::wait<0>();
    const int column_block = u / k_tiles;
    const int64_t n0 = static_cast<int64_t>(column_block) * kWeightRows;
    const int tiles = q - part_start + 1;
    if (tiles == k_tiles) {
      for_each_acc([&](int row, int col, float v) {
        Bf16* out = p.c + static_cast<int64_t>(row) * ldc + n0 + col;
        *out = bf16::to_bf16(p.accumulate ? v + bf16::to_float(*out) : v);
      });
    } else {
      float* slot = partial + (2 * static_cast<int64_t>(blockIdx.x) + (part_start == 0 ? 0 : 1)) * slot_floats;
      for_each_acc([&](int row, int col, float v) { slot[row * kWeightRows + col] = v; });
      __threadfence();
      __syncthreads();
      if (tid == 0) {
        const int before = atomicAdd(arrivals + column_block, tiles);
        last_part = before + tiles == k_tiles;
        if (last_part) arrivals[column_block] = 0;
      }
      __syncthreads();
      if (last_part) {
        __threadfence();
        const int first_unit = column_block * k_tiles;
        const int b0 = block_of(first_unit), parts = block_of(first_unit + k_tiles - 1) - b0 + 1;
        for (int i = tid; i < parts; i += kThreads) {
          part_slot[i] = 2 * (b0 + i) + (range_start(b0 + i) >= first_unit ? 0 : 1);
        }
        __syncthreads();
        // Four floats a thread at a time, the parts' loads issued together, added in block order.
        const float4* slots = reinterpret_cast<const float4*>(partial);
        const int64_t slot_quads = slot_floats / 4;
        for (int64_t e = tid; e < slot_quads; e += kThreads) {
          float4 v = __ldcg(slots + part_slot[0] * slot_quads + e);
          int i = 1;
          for (; i + 4 <= parts; i += 4) {
            float4 x[4];
            #pragma unroll
            for (int j = 0; j < 4; ++j) x[j] = __ldcg(slots + part_slot[i + j] * slot_quads + e);
            #pragma unroll
            for (int j = 0; j < 4; ++j) v = add4(v, x[j]);
          }
          for (; i < parts; ++i) v = add4(v, __ldcg(slots + part_slot[i] * slot_quads + e));
          Bf16* out = p.c + (e / (kWeightRows / 4)) * ldc + n0 + (e % (kWeightRows / 4)) * 4;
          const float sums[4] = {v.x, v.y, v.z, v.w};
          #pragma unroll
          for (int j = 0; j < 4; ++j) out[j] = bf16::to_bf16(p.accumulate ? sums[j] + bf16::to_float(out[j]) : sums[j]);
        }
      }
    }
    clear();
    part_start = q + 1;
  }
}

template <int kChunks, int kPanels, int kPerSm>
cudaError_t launch_chunks(const GemmParams& p, int blocks, float* partial, int* arrivals, Stream stream) {
  using S = Shape<kChunks, kPanels, kPerSm>;
  if constexpr (S::kStages < 3) {
    return cudaErrorInvalidConfiguration;
  } else {
    auto kernel = skinny_gemm_kernel<kChunks, kPanels, kPerSm>;
    static const cudaError_t configured =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, S::kSmemBytes);
    if (configured != cudaSuccess) return configured;
    return launch_pdl(kernel, blocks, kThreads, S::kSmemBytes, stream, p, partial, arrivals);
  }
}

template <int kPanels, int kPerSm>
cudaError_t launch_variant(const GemmParams& p, int blocks, float* partial, int* arrivals, Stream stream) {
  switch ((p.m + 63) / 64) {
    case 1: return launch_chunks<1, kPanels, kPerSm>(p, blocks, partial, arrivals, stream);
    case 2: return launch_chunks<2, kPanels, kPerSm>(p, blocks, partial, arrivals, stream);
    case 3: return launch_chunks<3, kPanels, kPerSm>(p, blocks, partial, arrivals, stream);
    default: return launch_chunks<4, kPanels, kPerSm>(p, blocks, partial, arrivals, stream);
  }
}

int multiprocessors() {
  static const int count = [] {
    int device = 0, n = 0;
    if (cudaGetDevice(&device) != cudaSuccess || cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
      cudaGetLastError();
      return 1;
    }
    return n;
  }();
  return count;
}

int panels(const GemmParams& p, int variant) { return (variant & 1) && p.k % 128 == 0 ? 2 : 1; }
int per_sm(int variant) { return variant & 2 ? 2 : 1; }

int grid_blocks(const GemmParams& p, int variant) {
  const int64_t units = p.n / kWeightRows * (p.k / (64 * panels(p, variant)));
  return static_cast<int>(std::min<int64_t>({units, int64_t{multiprocessors()} * per_sm(variant), kMaxBlocks}));
}

}  // namespace

namespace launch {

size_t skinny_workspace_bytes(const GemmParams& p, int variant) {
  return 2 * static_cast<size_t>(grid_blocks(p, variant)) * static_cast<size_t>(p.m) * kWeightRows * sizeof(float);
}

const char* skinny_gemm(const GemmParams& p, float* workspace, int* arrivals, Stream stream, int variant) {
  if (!skinny_fits(p) || !workspace || !arrivals) return "shape or workspace not taken by the skinny GEMM";
  const int blocks = grid_blocks(p, variant);
  cudaError_t e = cudaSuccess;
  if (panels(p, variant) == 1) {
    e = per_sm(variant) == 1 ? launch_variant<1, 1>(p, blocks, workspace, arrivals, stream)
                             : launch_variant<1, 2>(p, blocks, workspace, arrivals, stream);
  } else {
    e = per_sm(variant) == 1 ? launch_variant<2, 1>(p, blocks, workspace, arrivals, stream)
                             : launch_variant<2, 2>(p, blocks, workspace, arrivals, stream);
  }
  if (e == cudaSuccess) e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

}  // namespace launch

}  // namespace tessera::kernels::cuda
