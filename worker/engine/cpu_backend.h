// Backend on the host CPU: kernels/cpu with OpenMP threads. Weights are borrowed from the
// mapped model file (no copy); activations and the KV cache live in host memory.
#pragma once

#include <memory>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/matmul.h"
#include "worker/engine/backend.h"

namespace tessera::engine {

struct CpuBackendOptions {
  int num_threads = 0;  // 0: every CPU in this process's affinity mask
  kernels::cpu::MatmulPath matmul_path = kernels::cpu::MatmulPath::kAuto;
};

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(CpuBackendOptions options);
  std::string name() const override;

  Result<WeightTensor> upload_weight(GgmlType type, std::span<const std::byte> host, int64_t n, int64_t k) override;
  Result<float*> allocate_floats(int64_t count, std::string_view what) override;
  Status upload_floats(std::span<const float> host, float* dst) override;
  Status allocate_kv(const KvShape& shape) override;
  Status copy_kv_pages(std::span<const std::pair<int32_t, int32_t>> src_dst) override;

  Status begin_step(const StepLayout& layout) override;
  Status embed(const WeightTensor& table, float scale, float* out) override;
  Status rms_norm(const float* x, const float* weight, float eps, float* out, int64_t rows, int64_t width) override;
  Status matmul(const float* x, int64_t m, int64_t k, std::span<const MatmulTarget> targets) override;
  Status rope(float* q, int64_t num_heads, float* k, int64_t num_kv_heads, int64_t head_dim,
              std::span<const float> inv_freq, RopeStyle style) override;
  Status attention(int64_t layer, const float* q, const float* k, const float* v, int64_t num_heads, float scale,
                   int64_t sliding_window, float* out) override;
  Status silu_mul(const float* gate, const float* up, int64_t in_stride, float* out, int64_t rows,
                  int64_t width) override;
  Status add(float* x, const float* y, int64_t count, float scale) override;
  Status gather_rows(const float* src, std::span<const int32_t> rows, int64_t width, float* dst) override;
  Status download(const float* src, int64_t count, std::span<float> dst) override;

  int num_threads() const { return num_threads_; }

 private:
  std::byte* layer_k(int64_t layer) { return kv_.data() + layer * 2 * layer_bytes_; }
  std::byte* layer_v(int64_t layer) { return layer_k(layer) + layer_bytes_; }
  kernels::cpu::KvCacheShape kernel_kv_shape() const;

  CpuBackendOptions options_;
  int num_threads_ = 1;
  std::vector<std::unique_ptr<float[]>> buffers_;
  KvShape kv_shape_;
  int64_t layer_bytes_ = 0;  // bytes of K (or V) per layer
  std::vector<std::byte> kv_;
  kernels::cpu::MatmulWorkspace matmul_workspace_;
  // This step's layout and the rope tables of its positions (per rotary width).
  StepLayout layout_;
  std::vector<kernels::cpu::AttentionSequence> attention_sequences_;
  std::vector<float> rope_cos_, rope_sin_;
  const float* rope_table_key_ = nullptr;
};

}  // namespace tessera::engine
