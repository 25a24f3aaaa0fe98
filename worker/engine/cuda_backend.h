// Backend on one CUDA device: kernels/cuda on bf16 activations, GEMMs through cuBLASLt,
// every operation enqueued on one stream. Weights are converted to bf16 at upload and
// placed in one arena in upload order, so q/k/v (and gate/up) projections that read the
// same input run as one GEMM. The KV cache is bf16, [pages, page_size, kv_heads, head_dim]
// per layer for K and for V.
//
// Memory: weights, then activations, then the KV pool gets what is left of
// gpu_memory_utilization × the device's memory (kv_budget_bytes), less a reserve for
// cuBLASLt, step metadata and CUDA graphs.
//
// Decode-only steps can be captured as CUDA graphs (begin_capture / end_capture / replay):
// the engine pads the batch to a bucket and keeps every pointer and size of the graph
// fixed; only the step metadata (uploaded in begin_step, outside the graph) changes.
//
// Plain C++ header: no CUDA headers. Used by the engine's step thread only.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "worker/engine/backend.h"

namespace tessera::engine {

struct CudaBackendOptions {
  int device_index = 0;
  double gpu_memory_utilization = 0.9;
  int64_t max_batch_tokens = 512;  // rows of step metadata
  int64_t max_sequences = 64;
  bool cuda_graphs = true;
};

class CudaBackend final : public Backend {
 public:
  // UNAVAILABLE when the device does not exist or the driver cannot be used.
  [[nodiscard]] static Result<std::unique_ptr<CudaBackend>> create(const CudaBackendOptions& options);
  ~CudaBackend() override;

  std::string name() const override;
  ActType activation_type() const override { return ActType::kBF16; }

  Result<WeightTensor> upload_weight(GgmlType type, std::span<const std::byte> host, int64_t n, int64_t k) override;
  void expect_weights(int64_t num_elements, int64_t num_tensors) override;
  int64_t kv_budget_bytes() const override;
  Result<Act> allocate_activations(int64_t count, std::string_view what) override;
  Status upload_floats(std::span<const float> host, Act dst) override;
  Status allocate_kv(const KvShape& shape) override;
  Status copy_kv_pages(std::span<const std::pair<int32_t, int32_t>> src_dst) override;

  Status begin_step(const StepLayout& layout) override;
  Status embed(const WeightTensor& table, float scale, Act out) override;
  Status rms_norm(Act x, Act weight, float eps, Act out, int64_t rows, int64_t width) override;
  Status matmul(Act x, int64_t m, int64_t k, std::span<const MatmulTarget> targets) override;
  Status normed_matmul(Act x, const RowNorm& norm, int64_t m, int64_t k,
                       std::span<const MatmulTarget> targets) override;
  Status matmul_add(Act x, int64_t m, int64_t k, const WeightTensor& w, Act residual, float scale,
                    Act scratch) override;
  Status attention(const AttentionOp& op) override;
  Status silu_mul(Act gate_up, Act out, int64_t rows, int64_t width) override;
  Status gate_up_silu(Act x, const RowNorm& norm, int64_t m, int64_t k, const WeightTensor& gate,
                      const WeightTensor& up, Act gate_up, Act act) override;
  Status add(Act x, Act y, int64_t count, float scale) override;
  Status gather_rows(Act src, std::span<const int32_t> rows, int64_t width, Act dst) override;
  Status download(Act src, int64_t count, std::span<float> dst) override;
  bool device_argmax() const override { return true; }
  Status argmax(Act logits, int64_t rows, int64_t vocab, std::span<int32_t> out) override;
  bool device_sampling() const override { return true; }
  Status sample(Act logits, int64_t vocab, std::span<const DeviceSamplingRow> rows, std::span<const LogitEdit> edits,
                std::span<int32_t> out) override;

  // ---- CUDA graphs of whole steps ----
  // Block tables of graph steps are laid out `graph_table_width` pages wide so a graph's
  // kernels see one shape; begin_step with `graph_table_width` > 0 uses that width and a
  // decode split planned for `graph_context` tokens (the bucket's longest context).
  struct GraphShape {
    int64_t table_width = 0;
    int64_t context = 0;
  };
  void set_graph_shape(GraphShape shape) { graph_shape_ = shape; }
  // Between begin_capture and end_capture the model's operations are recorded, not run.
  [[nodiscard]] Status begin_capture();
  // Ends the capture and keeps the graph under `key`, or drops it (a failed capture).
  [[nodiscard]] Status end_capture(uint64_t key, bool keep = true);
  bool has_graph(uint64_t key) const;
  [[nodiscard]] Status replay(uint64_t key);
  size_t num_graphs() const;

 private:
  struct Impl;
  // The targets' GEMMs; with a norm, of the normalized rows (only where the GEMV fuses it).
  Status run_matmul(Act x, const RowNorm* norm, int64_t m, int64_t k, std::span<const MatmulTarget> targets);
  explicit CudaBackend(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
  GraphShape graph_shape_;
};

}  // namespace tessera::engine
