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
  bool skinny = false;  // launch::skinny_gemm instead
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

  bool skinny = true;       // time the skinny GEMM beside cuBLASLt's candidates
  int* arrivals = nullptr;  // the skinny GEMM's counts, one per 128 output columns
  int64_t arrival_slots = 0;

  // Whether the skinny GEMM can take the shape with this Gemm's buffers.
  bool skinny_fits(const GemmParams& shape) const {
    return skinny && launch::skinny_fits(shape) && shape.n / 128 <= arrival_slots &&
           launch::skinny_workspace_bytes(shape) <= workspace_bytes;
  }

  // Times cuBLASLt's candidates and the skinny GEMM (5 runs each) and keeps the fastest in
  // `plan`.
  Status tune(Plan& plan, const cublasLtMatmulHeuristicResult_t* results, int found, const GemmParams& shape,
              Stream stream);

  ~Impl() {
    plans.clear();
    if (workspace) cudaFree(workspace);
    if (arrivals) cudaFree(arrivals);
    if (handle) cublasLtDestroy(handle);
  }

  // The plan of a shape; the first call for a skinny shape (m <= tuned_rows) times the
  // heuristic's candidates on `stream` (reading the caller's A and W, writing a scratch C)
  // and keeps the fastest, which synchronizes that stream once. Accumulating into C (beta
  // 1) is tuned apart: the fastest candidate is not always the same.
  Result<Plan*> plan(const GemmParams& shape, int64_t ldc, Stream stream) {
    const int64_t m = shape.m, n = shape.n, k = shape.k;
    auto key = std::make_tuple(m, n, k, ldc, shape.accumulate);
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
    if (m <= tuned_rows && (found > 1 || skinny_fits(shape))) {
      TESSERA_RETURN_IF_ERROR(tune(*p, results, found, shape, stream));
    }
    Plan* raw = p.get();
    plans.emplace(key, std::move(p));
    return raw;
  }
};

Status Gemm::Impl::tune(Plan& plan, const cublasLtMatmulHeuristicResult_t* results, int found,
                        const GemmParams& shape, Stream stream) {
  const int64_t m = shape.m, ldc = shape.ldc;
  void* scratch = nullptr;
  if (cudaMalloc(&scratch, static_cast<size_t>(m * ldc) * 2) != cudaSuccess) {
    cudaGetLastError();  // no room to tune: keep the heuristic's first, and leave no error behind
    return Status::ok();
  }
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  cudaMemsetAsync(scratch, 0, static_cast<size_t>(m * ldc) * 2, stream);
  float best_ms = -1;
  // Runs a candidate once (skipped if it cannot run), then times 5 more runs; the fastest wins.
  auto time = [&](auto launch) {
    if (!launch()) return false;
    cudaEventRecord(start, stream);
    for (int r = 0; r < 5; ++r) launch();
    cudaEventRecord(stop, stream);
    cudaEventSynchronize(stop);
    float ms = 0;
    cudaEventElapsedTime(&ms, start, stop);
    if (best_ms >= 0 && ms >= best_ms) return false;
    best_ms = ms;
    return true;
  };
  const float alpha = 1.0f, beta = shape.accumulate ? 1.0f : 0.0f;
  for (int i = 0; i < found; ++i) {
    const bool faster = time([&] {
      return cublasLtMatmul(handle, plan.op, &alpha, shape.w, plan.w_layout, shape.a, plan.a_layout, &beta, scratch,
                            plan.c_layout, scratch, plan.c_layout, &results[i].algo, workspace, workspace_bytes,
                            stream) == CUBLAS_STATUS_SUCCESS;
    });
    if (faster) plan.algo = results[i].algo;
  }
  GemmParams into = shape;
  into.c = static_cast<Bf16*>(scratch);
  if (skinny_fits(shape)) {
    plan.skinny = time([&] {
      return launch::skinny_gemm(into, static_cast<float*>(workspace), arrivals, stream) == nullptr;
    });
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  cudaFree(scratch);
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return internal_error(std::string("gemm tuning: ") + cudaGetErrorString(e));
  return Status::ok();
}

Gemm::Gemm(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Gemm::~Gemm() = default;

Result<std::unique_ptr<Gemm>> Gemm::create(size_t workspace_bytes, int64_t tuned_rows, bool skinny) {
  auto impl = std::make_unique<Impl>();
  if (cublasStatus_t s = cublasLtCreate(&impl->handle); s != CUBLAS_STATUS_SUCCESS) return cublas_error("create", s);
  if (workspace_bytes > 0) {
    if (cudaError_t e = cudaMalloc(&impl->workspace, workspace_bytes); e != cudaSuccess) {
      return resource_exhausted(std::string("cuBLASLt workspace: ") + cudaGetErrorString(e));
    }
  }
  impl->workspace_bytes = workspace_bytes;
  impl->tuned_rows = tuned_rows;
  impl->skinny = skinny && workspace_bytes > 0;
  if (impl->skinny) {  // counts for up to 1M output columns, zero to begin with
    impl->arrival_slots = 8192;
    const size_t bytes = static_cast<size_t>(impl->arrival_slots) * sizeof(int);
    cudaError_t e = cudaMalloc(&impl->arrivals, bytes);
    if (e == cudaSuccess) e = cudaMemset(impl->arrivals, 0, bytes);
    if (e != cudaSuccess) return resource_exhausted(std::string("skinny GEMM counts: ") + cudaGetErrorString(e));
  }
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
  GemmParams shape = p;
  shape.ldc = ldc;
  auto plan = impl_->plan(shape, ldc, stream);
  if (!plan) return plan.status();
  if ((*plan)->skinny && impl_->skinny_fits(shape)) {  // else cuBLASLt's fastest, also kept
    const char* e = launch::skinny_gemm(shape, static_cast<float*>(impl_->workspace), impl_->arrivals, stream);
    return e ? internal_error(std::string("cuda skinny gemm: ") + e) : Status::ok();
  }
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
