// Hopper warpgroup MMA (wgmma, sm_90a) for tiles in shared memory with the 128-byte
// swizzle, and the layout those tiles are written in.
//
// A tile of R rows × 64·P bf16 columns is stored as P panels of R rows × 128 bytes (64
// columns) each, panel after panel; inside a panel the 16-byte chunk c of row r sits at
// chunk position c XOR (r mod 8). Every panel starts on a 1024-byte boundary (8 rows: one
// repeat of the swizzle pattern). The tensor cores read such a tile through a 64-bit
// descriptor: start address, the leading-dimension byte offset (LBO) and the
// stride-dimension byte offset (SBO), swizzle mode 1 (128 B). As a K-major operand (rows =
// M or N, columns = K): SBO is the 1024 bytes between groups of 8 rows, LBO is unused, and
// the k-th 16-column step starts 32·(k mod 4) bytes into panel k / 4. As an MN-major
// operand (rows = K, columns = N; the B operand transposed): SBO is the same 1024 bytes
// between groups of 8 K-rows, LBO is the distance between panels (64 columns of N), and
// the k-th 16-row step starts 16 rows (2048 bytes) further down.
//
// The accumulators of an m64nN instruction are laid out per warp as those of mma.sync
// m16n8k16 over N / 8 column blocks: warp w of the warpgroup holds rows 16w + g and
// 16w + g + 8 (g = lane / 4), d[4j + 0, 1] = row 16w + g, columns 8j + 2(lane % 4) + 0, 1
// and d[4j + 2, 3] = row 16w + g + 8, same columns. A register A fragment (k16) is four
// bf16 pairs in the m16n8k16 A order: (g, 2q), (g + 8, 2q), (g, 2q + 8), (g + 8, 2q + 8).
#pragma once

#include <cstdint>

// The 64 accumulators of an m64n128 instruction as read-write asm operands %0 .. %63.
#define TESSERA_WGMMA_ACC64(d) \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
  "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
  "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
  "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
  "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
  "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
  "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
  "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
#define TESSERA_WGMMA_ACC64_TEXT "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"

namespace tessera::kernels::cuda::wgmma {

// Byte offset of 16-byte chunk `chunk` (0 .. 8·P − 1) of row `row` in a swizzled tile of
// `rows` rows.
__device__ __forceinline__ uint32_t chunk_offset(int rows, int row, int chunk) {
  return static_cast<uint32_t>((chunk >> 3) * rows * 128 + row * 128 + (((chunk & 7) ^ (row & 7)) << 4));
}

// Descriptor of a swizzled tile (or a sub-tile: a start address inside it) in shared memory.
__device__ __forceinline__ uint64_t descriptor(uint32_t smem_address, uint32_t lbo_bytes, uint32_t sbo_bytes) {
  return static_cast<uint64_t>((smem_address & 0x3FFFF) >> 4) | static_cast<uint64_t>((lbo_bytes & 0x3FFFF) >> 4) << 16 |
         static_cast<uint64_t>((sbo_bytes & 0x3FFFF) >> 4) << 32 | uint64_t{1} << 62;
}

__device__ __forceinline__ uint32_t smem_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Orders this thread's earlier register and shared-memory accesses before the wgmma that
// follow (needed before the first wgmma, and whenever registers they use were written).
__device__ __forceinline__ void fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int kPending>
__device__ __forceinline__ void wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
}
// Shared memory written by ordinary stores or cp.async, read next by the tensor cores.
__device__ __forceinline__ void fence_shared_for_async() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// d (+)= A·B for m64n128k16, bf16 inputs and fp32 accumulators: A and B K-major tiles in
// shared memory. accumulate = 0 overwrites d.
__device__ __forceinline__ void m64n128k16_ss(float (&d)[64], uint64_t a, uint64_t b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " TESSERA_WGMMA_ACC64_TEXT ", %64, %65, p, 1, 1, 0, 0;\n}\n"
      : TESSERA_WGMMA_ACC64(d)
      : "l"(a), "l"(b), "r"(accumulate));
}

// d += A·B for m64n128k16: A from registers (this thread's fragment), B an MN-major tile in
// shared memory (N contiguous: taken transposed).
__device__ __forceinline__ void m64n128k16_rs_mn(float (&d)[64], const uint32_t (&a)[4], uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " TESSERA_WGMMA_ACC64_TEXT ", {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
      : TESSERA_WGMMA_ACC64(d)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
}

}  // namespace tessera::kernels::cuda::wgmma
