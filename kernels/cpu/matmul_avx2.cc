// AVX2 + FMA + F16C matmul kernels (this file is compiled with -mavx2 -mfma -mf16c).
// No standard-library includes here: see matmul_internal.h.
#include <immintrin.h>

#include "kernels/cpu/matmul_internal.h"

namespace tessera::kernels::cpu::detail {
namespace {

#define TESSERA_VNNI 0
// 16 vector registers: 4 weight rows x 2 activation rows of accumulators.
constexpr int64_t kTileCols = 2;
#define TESSERA_TILE_CASES TESSERA_TILE_CASE(1) TESSERA_TILE_CASE(2)

#include "kernels/cpu/matmul_tiles.inc"

}  // namespace

void run_job_avx2(const RowRangeJob& job, Scratch scratch) { run_job(job, scratch); }

void quantize_rows_avx2(const float* x, int64_t x_stride, int64_t m, int64_t k, int8_t* q, float* d, float* s16) {
  quantize_rows_simd(x, x_stride, m, k, q, d, s16);
}

}  // namespace tessera::kernels::cpu::detail
