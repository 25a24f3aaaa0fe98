// Shared between quant_matmul.cc (dispatch, threads) and the per-instruction-set kernel
// files (matmul_avx2.cc, matmul_avx512.cc). Those files are compiled with -mavx2 /
// -mavx512* flags, so this header must stay free of inline code from the standard
// library: an inline function compiled there with wider instructions could be the copy
// the linker keeps for the whole program.
#pragma once

#include <cstddef>
#include <cstdint>

namespace tessera::kernels::cpu::detail {

// Activations quantized in blocks of 32 elements: q = round(x / d), d = max|x| / 127.
// s16 holds d times the sum of q over each half block, for the weights' min/offset term.
struct QuantizedRowsView {
  const int8_t* q = nullptr;    // [m, k]
  const float* d = nullptr;     // [m, k / 32]
  const float* s16 = nullptr;   // [m, 2 * k / 32 rounded up to a multiple of 8], zero padded
  const float* d_t = nullptr;   // d transposed: [k / 32, m_padded], zero padded
  int64_t m = 0;
  int64_t k = 0;
  int64_t m_padded = 0;         // m rounded up to a multiple of 4
};

// One weight matrix [n, k] (rows = output features) in its file's layout.
struct WeightView {
  uint32_t type = 0;            // GgmlType id
  const std::byte* data = nullptr;
  int64_t n = 0;
  int64_t k = 0;
  int64_t row_bytes = 0;
};

// Rows [row_begin, row_end) of y[m, n] (row stride y_stride) = x · W^T (+ bias).
struct RowRangeJob {
  WeightView weight;
  int64_t row_begin = 0;
  int64_t row_end = 0;
  float* y = nullptr;
  int64_t y_stride = 0;
  const float* bias = nullptr;  // [n] or null
  // Exactly one of these is set: quantized activations for the integer kernels, float
  // activations [m, k] (stride x_stride) for float weights (F32/F16/BF16).
  const QuantizedRowsView* xq = nullptr;
  const float* x = nullptr;
  int64_t x_stride = 0;
  int64_t m = 0;
};

// Per-thread scratch the kernels decode weights into (grown by the caller).
struct Scratch {
  std::byte* data = nullptr;
  size_t bytes = 0;
};

// Bytes of scratch a job needs.
size_t scratch_bytes_needed(const RowRangeJob& job);

// Kernels: each computes a whole job. Integer kernels handle the types for which
// quantized_dot_supported() is true; float kernels F32/F16/BF16.
void run_job_scalar(const RowRangeJob& job, Scratch scratch);
void run_job_avx2(const RowRangeJob& job, Scratch scratch);
void run_job_avx512(const RowRangeJob& job, Scratch scratch);

// Quantizes rows of x [m, k] into the QuantizedRowsView's (writable) buffers. The vector
// versions give the same bytes as the scalar one.
void quantize_rows(const float* x, int64_t x_stride, int64_t m, int64_t k, int8_t* q, float* d, float* s16);
void quantize_rows_avx2(const float* x, int64_t x_stride, int64_t m, int64_t k, int8_t* q, float* d, float* s16);
void quantize_rows_avx512(const float* x, int64_t x_stride, int64_t m, int64_t k, int8_t* q, float* d, float* s16);

}  // namespace tessera::kernels::cpu::detail
