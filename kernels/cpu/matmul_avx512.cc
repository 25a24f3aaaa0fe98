// AVX-512 matmul kernels (compiled with -mavx512f -mavx512bw -mavx512vl -mavx512vnni):
// VNNI's u8·s8 dot product on 256-bit vectors, with AVX-512VL's 32 vector registers
// holding a 4x4 tile of accumulators. No standard-library includes: see matmul_internal.h.
#include <immintrin.h>

#include "kernels/cpu/matmul_internal.h"

namespace tessera::kernels::cpu::detail {
namespace {

#define TESSERA_VNNI 1
constexpr int64_t kTileCols = 4;
#define TESSERA_TILE_CASES TESSERA_TILE_CASE(1) TESSERA_TILE_CASE(2) TESSERA_TILE_CASE(3) TESSERA_TILE_CASE(4)

#include "kernels/cpu/matmul_tiles.inc"

}  // namespace

void run_job_avx512(const RowRangeJob& job, Scratch scratch) { run_job(job, scratch); }

void quantize_rows_avx512(const float* x, int64_t x_stride, int64_t m, int64_t k, int8_t* q, float* d, float* s16) {
  quantize_rows_simd(x, x_stride, m, k, q, d, s16);
}

}  // namespace tessera::kernels::cpu::detail
