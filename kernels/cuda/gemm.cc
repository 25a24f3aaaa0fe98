#include "kernels/cuda/gemm.h"

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <map>
#include <string>
#include <tuple>

namespace tessera::kernels::cuda {

namespace {

Status cublas_error(const char* what, cublasStatus_t s) {
  return internal_error(std::string("cuBLASLt ") + what + ": status " + std::to_string(static_cast<int>(s)));
}

// Row-major C = A·Wᵀ is column-major Cᵀ = W·Aᵀ: cuBLASLt sees the weight buffer as a
// k×n column-major matrix taken transposed, the activations as k×m, and writes n×m.
struct Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t w_layout = nullptr, a_layout = nullptr, c_layout = nullptr;
  cublasLtMatmulAlgo_t algo{};
  ~Plan() {
    if (c_layout) cublasLtMatrixLayoutDestroy(c_layout);
    if (a_layout) cublasLtMatrixLayoutDestroy(a_layout);
    if (w_layout) cublasLtMatrixLayoutDestroy(w_layout);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

}  // namespace

constexpr int kCandidates = 8;

struct Gemm::Impl {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  int64_t tuned_rows = 256;
  std::map<std::tuple<int64_t, int64_t, int64_t, int64_t, bool>, std::unique_ptr<Plan>> plans;

  // Index of the candidate that ran fastest (5 runs each).
  Result<int> fastest(const Plan& p, const cublasLtMatmulHeuristicResult_t* results, int found, int64_t m,
                      int64_t ldc, bool accumulate, const void* a, const void* w, Stream stream);

  ~Impl() {
    plans.clear();
    if (workspace) cudaFree(workspace);
    if (handle) cublasLtDestroy(handle);
  }

  // The plan of a shape; the first call for a skinny shape (m <= tuned_rows) times the
  // heuristic's candidates on `stream` (reading the caller's A and W, writing a scratch C)
  // and keeps the fastest, which synchronizes that stream once. Accumulating into C (beta
  // 1) is tuned apart: the fastest candidate is not always the same.
  Result<Plan*> plan(int64_t m, int64_t n, int64_t k, int64_t ldc, bool accumulate, const void* a, const void* w,
                     Stream stream) {
    auto key = std::make_tuple(m, n, k, ldc, accumulate);
    if (auto it = plans.find(key); it != plans.end()) return it->second.get();
    auto p = std::make_unique<Plan>();
    cublasStatus_t s = cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    if (s != CUBLAS_STATUS_SUCCESS) return cublas_error("matmul descriptor", s);
    const cublasOperation_t transpose = CUBLAS_OP_T, keep = CUBLAS_OP_N;
    cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &transpose, sizeof transpose);
    cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &keep, sizeof keep);
    if ((s = cublasLtMatrixLayoutCreate(&p->w_layout, CUDA_R_16BF, k, n, k)) != CUBLAS_STATUS_SUCCESS ||
        (s = cublasLtMatrixLayoutCreate(&p->a_layout, CUDA_R_16BF, k, m, k)) != CUBLAS_STATUS_SUCCESS ||
        (s = cublasLtMatrixLayoutCreate(&p->c_layout, CUDA_R_16BF, n, m, ldc)) != CUBLAS_STATUS_SUCCESS) {
      return cublas_error("matrix layout", s);
    }
    cublasLtMatmulPreference_t pref = nullptr;
    if ((s = cublasLtMatmulPreferenceCreate(&pref)) != CUBLAS_STATUS_SUCCESS) return cublas_error("preference", s);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_bytes,
                                         sizeof workspace_bytes);
    cublasLtMatmulHeuristicResult_t results[kCandidates]{};
    int found = 0;
    const int wanted = m <= tuned_rows ? kCandidates : 1;
    s = cublasLtMatmulAlgoGetHeuristic(handle, p->op, p->w_layout, p->a_layout, p->c_layout, p->c_layout, pref, wanted,
                                       results, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (s != CUBLAS_STATUS_SUCCESS || found == 0) {
      return internal_error("cuBLASLt: no bf16 algorithm for m=" + std::to_string(m) + " n=" + std::to_string(n) +
                            " k=" + std::to_string(k) + " (status " + std::to_string(static_cast<int>(s)) + ")");
    }
    p->algo = results[0].algo;
    if (found > 1) {
      auto best = fastest(*p, results, found, m, ldc, accumulate, a, w, stream);
      if (!best) return best.status();
      p->algo = results[*best].algo;
    }
    Plan* raw = p.get();
    plans.emplace(key, std::move(p));
    return raw;
  }
};

Result<int> Gemm::Impl::fastest(const Plan& p, const cublasLtMatmulHeuristicResult_t* results, int found, int64_t m,
                                int64_t ldc, bool accumulate, const void* a, const void* w, Stream stream) {
  void* scratch = nullptr;
  if (cudaMalloc(&scratch, static_cast<size_t>(m * ldc) * 2) != cudaSuccess) {
    cudaGetLastError();  // no room to tune: keep the heuristic's first, and leave no error behind
    return 0;
  }
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  cudaMemsetAsync(scratch, 0, static_cast<size_t>(m * ldc) * 2, stream);
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  int best = 0;
  float best_ms = 0;
  for (int i = 0; i < found; ++i) {
    auto launch = [&] {
      return cublasLtMatmul(handle, p.op, &alpha, w, p.w_layout, a, p.a_layout, &beta, scratch, p.c_layout, scratch,
                            p.c_layout, &results[i].algo, workspace, workspace_bytes, stream);
    };
    if (launch() != CUBLAS_STATUS_SUCCESS) continue;  // a candidate that cannot run is skipped
    cudaEventRecord(start, stream);
    for (int r = 0; r < 5; ++r) launch();
    cudaEventRecord(stop, stream);
    cudaEventSynchronize(stop);
    float ms = 0;
    cudaEventElapsedTime(&ms, start, stop);
    if (i == 0 || ms < best_ms) {
      best = i;
      best_ms = ms;
    }
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  cudaFree(scratch);
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return internal_error(std::string("gemm tuning: ") + cudaGetErrorString(e));
  return best;
}

Gemm::Gemm(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Gemm::~Gemm() = default;

Result<std::unique_ptr<Gemm>> Gemm::create(size_t workspace_bytes, int64_t tuned_rows) {
  auto impl = std::make_unique<Impl>();
  if (cublasStatus_t s = cublasLtCreate(&impl->handle); s != CUBLAS_STATUS_SUCCESS) return cublas_error("create", s);
  if (workspace_bytes > 0) {
    if (cudaError_t e = cudaMalloc(&impl->workspace, workspace_bytes); e != cudaSuccess) {
      return resource_exhausted(std::string("cuBLASLt workspace: ") + cudaGetErrorString(e));
    }
  }
  impl->workspace_bytes = workspace_bytes;
  impl->tuned_rows = tuned_rows;
  return std::unique_ptr<Gemm>(new Gemm(std::move(impl)));
}

Status Gemm::run(const GemmParams& p, Stream stream) {
  if (p.m < 0 || p.n <= 0 || p.k <= 0 || (p.ldc != 0 && p.ldc < p.n)) return invalid_argument("cuda gemm: bad shape");
  const int64_t ldc = p.ldc > 0 ? p.ldc : p.n;
  const bool gemv_fits = launch::gemv_fits(p.m, p.k, p.a, p.w, p.norm_weight);
  if (p.gate_up_silu && (p.m != 1 || p.accumulate || !gemv_fits)) {
    return invalid_argument("cuda gemm: the fused gate/up/silu GEMV needs one row, k % 8 == 0 and 16-byte aligned A and W");
  }
  if (p.norm_weight && (p.m != 1 || !gemv_fits)) {
    return invalid_argument("cuda gemm: a row norm is fused only into the one-row GEMV (k % 8 == 0, aligned buffers)");
  }
  if (p.m == 0) return Status::ok();
  if (!p.a || !p.w || !p.c) return invalid_argument("cuda gemm: null buffer");
  if (gemv_fits) {  // one row: ldc does not matter
    if (const char* e = launch::gemv(p, stream)) return internal_error(std::string("cuda gemv: ") + e);
    return Status::ok();
  }
  auto plan = impl_->plan(p.m, p.n, p.k, ldc, p.accumulate, p.a, p.w, stream);
  if (!plan) return plan.status();
  const float alpha = 1.0f, beta = p.accumulate ? 1.0f : 0.0f;
  const cublasStatus_t s =
      cublasLtMatmul(impl_->handle, (*plan)->op, &alpha, p.w, (*plan)->w_layout, p.a, (*plan)->a_layout, &beta, p.c,
                     (*plan)->c_layout, p.c, (*plan)->c_layout, &(*plan)->algo, impl_->workspace,
                     impl_->workspace_bytes, stream);
  if (s != CUBLAS_STATUS_SUCCESS) return cublas_error("matmul", s);
  return Status::ok();
}

size_t Gemm::num_cached_shapes() const { return impl_->plans.size(); }

}  // namespace tessera::kernels::cuda
