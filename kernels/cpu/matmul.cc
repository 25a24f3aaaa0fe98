#include "kernels/cpu/matmul.h"

#include <omp.h>

#include <algorithm>
#include <string>

#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/matmul_internal.h"

namespace tessera::kernels::cpu {
namespace {

bool has_avx2(const CpuFeatures& f) { return f.avx2 && f.fma && f.f16c; }
bool has_avx512_vnni(const CpuFeatures& f) {
  return has_avx2(f) && f.avx512f && f.avx512bw && f.avx512vl && f.avx512_vnni;
}

bool is_float(GgmlType type) {
  return type == GgmlType::kF32 || type == GgmlType::kF16 || type == GgmlType::kBF16;
}

using JobFn = void (*)(const detail::RowRangeJob&, detail::Scratch);
using QuantizeFn = void (*)(const float*, int64_t, int64_t, int64_t, int8_t*, float*, float*);

Status pick_kernel(MatmulPath path, JobFn* kernel, QuantizeFn* quantize) {
  *quantize = &detail::quantize_rows;
  const CpuFeatures& f = cpu_features();
  if (path == MatmulPath::kAuto) path = active_matmul_path();
  switch (path) {
    case MatmulPath::kAvx2:
      if (!has_avx2(f)) return failed_precondition("matmul: this CPU lacks AVX2/FMA/F16C");
      *kernel = &detail::run_job_avx2;
      *quantize = &detail::quantize_rows_avx2;
      return Status::ok();
    case MatmulPath::kAvx512:
      if (!has_avx512_vnni(f)) return failed_precondition("matmul: this CPU lacks AVX-512 F/BW/VL/VNNI");
      *kernel = &detail::run_job_avx512;
      *quantize = &detail::quantize_rows_avx512;
      return Status::ok();
    case MatmulPath::kScalar:
    case MatmulPath::kAuto: break;
  }
  *kernel = &detail::run_job_scalar;
  return Status::ok();
}

// Grow-only per-thread decode buffer.
detail::Scratch thread_scratch(size_t bytes) {
  thread_local std::vector<std::byte> buffer;
  if (buffer.size() < bytes) buffer.resize(bytes);
  return {buffer.data(), buffer.size()};
}

}  // namespace

bool matmul_supported(GgmlType type) {
  switch (type) {
    case GgmlType::kF32:
    case GgmlType::kF16:
    case GgmlType::kBF16:
    case GgmlType::kQ4_0:
    case GgmlType::kQ4_1:
    case GgmlType::kQ5_0:
    case GgmlType::kQ5_1:
    case GgmlType::kQ8_0:
    case GgmlType::kQ4_K:
    case GgmlType::kQ5_K:
    case GgmlType::kQ6_K: return true;
    default: return false;
  }
}

int64_t matmul_k_multiple(GgmlType type) {
  if (is_float(type)) return 1;
  return std::max<int64_t>(32, ggml_type_traits(type) ? ggml_type_traits(type)->block_size : 32);
}

MatmulPath active_matmul_path() {
  const CpuFeatures& f = cpu_features();
  if (has_avx512_vnni(f)) return MatmulPath::kAvx512;
  if (has_avx2(f)) return MatmulPath::kAvx2;
  return MatmulPath::kScalar;
}

const char* matmul_path_name(MatmulPath path) {
  switch (path) {
    case MatmulPath::kAuto: return "auto";
    case MatmulPath::kScalar: return "scalar";
    case MatmulPath::kAvx2: return "avx2";
    case MatmulPath::kAvx512: return "avx512-vnni";
  }
  return "?";
}

Status matmul(const MatmulParams& p, MatmulWorkspace& ws) {
  if (p.m < 0 || p.k <= 0 || (p.m > 0 && p.x == nullptr)) {
    return invalid_argument("matmul: need x [m, k] with k > 0");
  }
  const int64_t x_stride = p.x_stride ? p.x_stride : p.k;
  if (x_stride < p.k) return invalid_argument("matmul: x_stride is smaller than k");
  bool any_quantized = false;
  for (const MatmulOutput& out : p.outputs) {
    const MatmulWeight& w = out.weight;
    const std::string what = "matmul: weight " + std::string(ggml_type_name(w.type)) + " [" +
                             std::to_string(w.n) + ", " + std::to_string(w.k) + "]";
    if (!matmul_supported(w.type)) return invalid_argument(what + ": no matmul kernel for this type");
    if (w.k != p.k) return invalid_argument(what + " does not match input width " + std::to_string(p.k));
    if (w.n <= 0 || w.k % matmul_k_multiple(w.type) != 0) {
      return invalid_argument(what + ": k must be a multiple of " +
                                      std::to_string(matmul_k_multiple(w.type)));
    }
    const auto row_bytes = row_size_bytes(w.type, w.k);
    if (!row_bytes || static_cast<int64_t>(w.data.size()) != *row_bytes * w.n) {
      return invalid_argument(what + ": expected " + std::to_string(row_bytes.value_or(0) * w.n) +
                                      " bytes, have " + std::to_string(w.data.size()));
    }
    const int64_t y_stride = out.y_stride ? out.y_stride : w.n;
    if (out.y == nullptr || y_stride < w.n) return invalid_argument(what + ": bad output buffer");
    any_quantized = any_quantized || !is_float(w.type);
  }
  JobFn kernel = nullptr;
  QuantizeFn quantize = nullptr;
  TESSERA_RETURN_IF_ERROR(pick_kernel(p.path, &kernel, &quantize));
  if (p.m == 0 || p.outputs.empty()) return Status::ok();

  detail::QuantizedRowsView xq;
  if (any_quantized) {
    const int64_t nb = p.k / 32;
    ws.q_.resize(static_cast<size_t>(p.m * p.k));
    ws.d_.resize(static_cast<size_t>(p.m * nb));
    ws.s16_.resize(static_cast<size_t>(p.m * ((nb + 3) / 4 * 8)));  // rows padded to 4 blocks
    // Rows are independent: quantize them on the whole team when there are enough.
    const int64_t mf = (nb + 3) / 4 * 8;
#pragma omp parallel for schedule(static) if (p.m >= 8)
    for (int64_t r = 0; r < p.m; ++r) {
      quantize(p.x + r * x_stride, x_stride, 1, p.k, ws.q_.data() + r * p.k, ws.d_.data() + r * nb,
               ws.s16_.data() + r * mf);
    }
    // The block scales also column-major, so kernels read four columns' scales at once.
    const int64_t m_padded = (p.m + 3) / 4 * 4;
    ws.d_t_.assign(static_cast<size_t>(nb * m_padded), 0.0f);
    for (int64_t r = 0; r < p.m; ++r) {
      for (int64_t b = 0; b < nb; ++b) ws.d_t_[static_cast<size_t>(b * m_padded + r)] = ws.d_[static_cast<size_t>(r * nb + b)];
    }
    xq = {ws.q_.data(), ws.d_.data(), ws.s16_.data(), ws.d_t_.data(), p.m, p.k, m_padded};
  }

  // Each output is split into one contiguous run of rows per thread (rounded to the
  // kernels' 4-row tiles), so a thread streams its part of every weight sequentially.
  const int num_threads = std::max(1, omp_get_max_threads());
  std::vector<detail::RowRangeJob> jobs;
  size_t scratch = 0;
  for (const MatmulOutput& out : p.outputs) {
    const MatmulWeight& w = out.weight;
    detail::RowRangeJob job;
    job.weight = {static_cast<uint32_t>(w.type), w.data.data(), w.n, w.k, *row_size_bytes(w.type, w.k)};
    job.y = out.y;
    job.y_stride = out.y_stride ? out.y_stride : w.n;
    job.bias = out.bias;
    job.m = p.m;
    if (is_float(w.type)) {
      job.x = p.x;
      job.x_stride = x_stride;
    } else {
      job.xq = &xq;
    }
    const int64_t per_thread = ((w.n + num_threads - 1) / num_threads + 3) / 4 * 4;
    for (int64_t r = 0; r < w.n; r += per_thread) {
      job.row_begin = r;
      job.row_end = std::min(w.n, r + per_thread);
      jobs.push_back(job);
    }
    scratch = std::max(scratch, detail::scratch_bytes_needed(job));
  }
  const int64_t num_jobs = static_cast<int64_t>(jobs.size());
#pragma omp parallel for schedule(static, 1)
  for (int64_t i = 0; i < num_jobs; ++i) kernel(jobs[static_cast<size_t>(i)], thread_scratch(scratch));
  return Status::ok();
}

}  // namespace tessera::kernels::cpu
