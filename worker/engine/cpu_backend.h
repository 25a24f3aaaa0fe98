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

  ActType activation_type() const override { return ActType::kF32; }

  Result<WeightTensor> upload_weight(GgmlType type, std::span<const std::byte> host, int64_t n, int64_t k) override;
  Result<Act> allocate_activations(int64_t count, std::string_view what) override;
  Status upload_floats(std::span<const float> host, Act dst) override;
  Status allocate_kv(const KvShape& shape) override;
  Status copy_kv_pages(std::span<const std::pair<int32_t, int32_t>> src_dst) override;

  Status begin_step(const StepLayout& layout) override;
  Status embed(const WeightTensor& table, float scale, Act out) override;
  Status rms_norm(Act x, Act weight, float eps, Act out, int64_t rows, int64_t width) override;
  Status matmul(Act x, int64_t m, int64_t k, std::span<const MatmulTarget> targets) override;
  Status attention(const AttentionOp& op) override;
  Status silu_mul(Act gate_up, Act out, int64_t rows, int64_t width) override;
  Status add(Act x, Act y, int64_t count, float scale) override;
  Status gather_rows(Act src, std::span<const int32_t> rows, int64_t width, Act dst) override;
  Status download(Act src, int64_t count, std::span<float> dst) override;

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
