// Reference matmul kernels: plain C++, the same decoded form and activation quantization
// as the SIMD kernels (results differ from them only in float summation order).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cpu/dequantize.h"
#include "kernels/cpu/matmul_internal.h"

namespace tessera::kernels::cpu::detail {
namespace {

inline float half_to_float(uint16_t bits) { return fp16_to_fp32(bits); }

#include "kernels/cpu/matmul_decode.inc"

float int_dot(const DecodedRows& w, int64_t r, const QuantizedRowsView& x, int64_t c, bool is_signed) {
  const int64_t nb = w.num_blocks;
  const uint8_t* codes = w.codes + r * nb * 32;
  const float* dwv = w.dwv + r * nb * 8;
  const int8_t* q = x.q + c * x.k;
  float acc = 0;
  for (int64_t b = 0; b < nb; ++b) {
    float block = 0;
    for (int lane = 0; lane < 8; ++lane) {
      int32_t s = 0;
      for (int e = lane * 4; e < lane * 4 + 4; ++e) {
        const int32_t code = is_signed ? static_cast<int8_t>(codes[b * 32 + e]) : codes[b * 32 + e];
        s += code * q[b * 32 + e];
      }
      block += static_cast<float>(s) * dwv[b * 8 + lane];
    }
    acc += block * x.d[c * nb + b];
  }
  const int64_t mf = m16_row_floats(nb);
  for (int64_t i = 0; i < 2 * nb; ++i) acc += w.m16[r * mf + i] * x.s16[c * mf + i];
  return acc;
}

}  // namespace

size_t scratch_bytes_needed(const RowRangeJob& job) {
  const int64_t k = job.weight.k;
  if (is_float_type(job.weight.type)) return static_cast<size_t>(kMaxTileRows * k) * sizeof(float);
  const int64_t nb = k / 32;
  // Decoded rows, then the scale products of scratch_scales().
  return static_cast<size_t>(kMaxTileRows * (nb * (32 + 8 * sizeof(float)) + m16_row_floats(nb) * sizeof(float)) +
                             nb * kMaxTileRows * 4 * sizeof(float));
}

void run_job_scalar(const RowRangeJob& job, Scratch scratch) {
  const WeightView& wt = job.weight;
  const uint8_t* base = reinterpret_cast<const uint8_t*>(wt.data);
  if (is_float_type(wt.type)) {
    float* row = reinterpret_cast<float*>(scratch.data);
    for (int64_t n = job.row_begin; n < job.row_end; ++n) {
      decode_float_row(wt.type, base + n * wt.row_bytes, wt.k, row);
      for (int64_t c = 0; c < job.m; ++c) {
        const float* x = job.x + c * job.x_stride;
        float s = 0;
        for (int64_t i = 0; i < wt.k; ++i) s += row[i] * x[i];
        if (job.bias) s += job.bias[n];
        job.y[c * job.y_stride + n] = s;
      }
    }
    return;
  }
  const DecodedRows w = scratch_rows(scratch.data, wt.k / 32);
  const bool is_signed = has_signed_codes(wt.type);
  for (int64_t n = job.row_begin; n < job.row_end; ++n) {
    decode_row(wt.type, base + n * wt.row_bytes, wt.k, w, 0);
    for (int64_t c = 0; c < job.xq->m; ++c) {
      float v = int_dot(w, 0, *job.xq, c, is_signed);
      if (job.bias) v += job.bias[n];
      job.y[c * job.y_stride + n] = v;
    }
  }
}

void quantize_rows(const float* x, int64_t x_stride, int64_t m, int64_t k, int8_t* q, float* d, float* s16) {
  const int64_t nb = k / 32;
  const int64_t mf = m16_row_floats(nb);
  for (int64_t r = 0; r < m; ++r) {
    const float* xr = x + r * x_stride;
    for (int64_t i = 2 * nb; i < mf; ++i) s16[r * mf + i] = 0.0f;
    for (int64_t b = 0; b < nb; ++b) {
      const float* xb = xr + b * 32;
      float amax = 0;
      for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(xb[i]));
      const float scale = amax / 127.0f;
      const float inv = scale > 0 ? 1.0f / scale : 0.0f;
      int8_t* qb = q + r * k + b * 32;
      int32_t sum_lo = 0, sum_hi = 0;
      for (int i = 0; i < 32; ++i) {
        const int32_t v = static_cast<int32_t>(std::nearbyint(xb[i] * inv));
        qb[i] = static_cast<int8_t>(std::clamp(v, -127, 127));
        (i < 16 ? sum_lo : sum_hi) += qb[i];
      }
      d[r * nb + b] = scale;
      s16[r * mf + b * 2] = scale * static_cast<float>(sum_lo);
      s16[r * mf + b * 2 + 1] = scale * static_cast<float>(sum_hi);
    }
  }
}

}  // namespace tessera::kernels::cpu::detail
