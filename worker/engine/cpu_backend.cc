#include "worker/engine/cpu_backend.h"

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <string>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/float_ops.h"

namespace tessera::engine {

namespace kc = kernels::cpu;

CpuBackend::CpuBackend(CpuBackendOptions options) : options_(options) {
  num_threads_ = options_.num_threads > 0 ? options_.num_threads : kc::cpu_features().num_logical_cpus;
  num_threads_ = std::max(1, num_threads_);
  // The engine's step thread owns the OpenMP team every kernel call uses.
  omp_set_num_threads(num_threads_);
}

std::string CpuBackend::name() const {
  const kc::MatmulPath path =
      options_.matmul_path == kc::MatmulPath::kAuto ? kc::active_matmul_path() : options_.matmul_path;
  return "cpu (" + std::to_string(num_threads_) + " threads, " + kc::matmul_path_name(path) + ")";
}

Result<WeightTensor> CpuBackend::upload_weight(GgmlType type, std::span<const std::byte> host, int64_t n, int64_t k) {
  const auto row_bytes = kc::row_size_bytes(type, k);
  if (!row_bytes || *row_bytes * n != static_cast<int64_t>(host.size())) {
    return invalid_argument("weight [" + std::to_string(n) + ", " + std::to_string(k) + "] " +
                            std::string(kc::ggml_type_name(type)) + " does not match its " +
                            std::to_string(host.size()) + " bytes");
  }
  return WeightTensor{type, host.data(), n, k, static_cast<int64_t>(host.size())};
}

Result<Act> CpuBackend::allocate_activations(int64_t count, std::string_view what) {
  if (count < 0) return invalid_argument("allocate " + std::string(what) + ": negative size");
  auto buffer = std::unique_ptr<float[]>(new (std::nothrow) float[static_cast<size_t>(std::max<int64_t>(count, 1))]());
  if (!buffer) {
    return resource_exhausted("allocating " + std::to_string(count * 4) + " bytes for " + std::string(what));
  }
  buffers_.push_back(std::move(buffer));
  return Act(buffers_.back().get(), ActType::kF32);
}

Status CpuBackend::upload_floats(std::span<const float> host, Act dst) {
  std::copy(host.begin(), host.end(), dst.as<float>());
  return Status::ok();
}

Status CpuBackend::allocate_kv(const KvShape& shape) {
  if (shape.dtype == KvDtype::kBF16) return invalid_argument("the CPU backend keeps its KV cache in f16 or f32, not bf16");
  kv_shape_ = shape;
  layer_bytes_ = shape.num_pages * shape.page_size * shape.num_kv_heads * shape.head_dim * shape.element_bytes();
  try {
    kv_.assign(static_cast<size_t>(2 * shape.num_layers * layer_bytes_), std::byte{0});
  } catch (const std::bad_alloc&) {
    return resource_exhausted("allocating the KV cache: " + std::to_string(shape.bytes()) + " bytes");
  }
  return Status::ok();
}

Status CpuBackend::copy_kv_pages(std::span<const std::pair<int32_t, int32_t>> src_dst) {
  const int64_t page_bytes = kv_shape_.page_size * kv_shape_.num_kv_heads * kv_shape_.head_dim * kv_shape_.element_bytes();
  for (const auto& [src, dst] : src_dst) {
    if (src < 0 || dst < 0 || src >= kv_shape_.num_pages || dst >= kv_shape_.num_pages) {
      return invalid_argument("copy_kv_pages: page outside the cache");
    }
    for (int64_t layer = 0; layer < kv_shape_.num_layers; ++layer) {
      for (std::byte* base : {layer_k(layer), layer_v(layer)}) {
        std::memcpy(base + dst * page_bytes, base + src * page_bytes, static_cast<size_t>(page_bytes));
      }
    }
  }
  return Status::ok();
}

Status CpuBackend::begin_step(const StepLayout& layout) {
  layout_ = layout;
  attention_sequences_.clear();
  for (const StepSequence& s : layout.sequences) {
    attention_sequences_.push_back({s.token_begin, s.num_tokens, s.start_position, s.page_table});
  }
  rope_table_key_ = nullptr;
  for (const int64_t slot : layout.kv_slots) {
    if (slot < 0 || slot >= kv_shape_.num_pages * kv_shape_.page_size) {
      return invalid_argument("step: KV slot " + std::to_string(slot) + " is outside the cache");
    }
  }
  return Status::ok();
}

Status CpuBackend::embed(const WeightTensor& table, float scale, Act out) {
  return kc::embedding_lookup({table.type, {table.data, static_cast<size_t>(table.bytes)}, table.n, table.k,
                               layout_.token_ids, out.as<float>(), scale});
}

Status CpuBackend::rms_norm(Act x, Act weight, float eps, Act out, int64_t rows, int64_t width) {
  kc::rms_norm({x.as<float>(), width, weight.as<float>(), out.as<float>(), width, rows, width, eps});
  return Status::ok();
}

Status CpuBackend::matmul(Act x, int64_t m, int64_t k, std::span<const MatmulTarget> targets) {
  kc::MatmulOutput outputs[8];
  if (targets.size() > std::size(outputs)) return invalid_argument("matmul: at most 8 outputs per call");
  for (size_t i = 0; i < targets.size(); ++i) {
    const WeightTensor& w = *targets[i].weight;
    outputs[i] = {{w.type, {w.data, static_cast<size_t>(w.bytes)}, w.n, w.k},
                  targets[i].y.as<float>(),
                  targets[i].y_stride,
                  targets[i].bias.as<const float>()};
  }
  return kc::matmul({x.as<const float>(), m, k, 0, {outputs, targets.size()}, options_.matmul_path}, matmul_workspace_);
}

kc::KvCacheShape CpuBackend::kernel_kv_shape() const {
  const auto dtype = kv_shape_.dtype == KvDtype::kF32 ? kc::KvDtype::kF32 : kc::KvDtype::kF16;
  return {dtype, kv_shape_.num_pages, kv_shape_.page_size, kv_shape_.num_kv_heads, kv_shape_.head_dim};
}

Status CpuBackend::attention(const AttentionOp& op) {
  const int64_t n = layout_.num_tokens();
  // Every layer rotates the same positions: compute cos/sin once per step.
  if (rope_table_key_ != op.inv_freq.data()) {
    rope_cos_.resize(static_cast<size_t>(n) * op.inv_freq.size());
    rope_sin_.resize(rope_cos_.size());
    kc::rope_tables(layout_.positions, op.inv_freq, rope_cos_.data(), rope_sin_.data());
    rope_table_key_ = op.inv_freq.data();
  }
  float* q = op.q.as<float>();
  float* k = op.k.as<float>();
  kc::apply_rope({q, op.row_stride, n, op.num_heads, op.head_dim, rope_cos_.data(), rope_sin_.data(), op.rope_style});
  kc::apply_rope({k, op.row_stride, n, op.num_kv_heads, op.head_dim, rope_cos_.data(), rope_sin_.data(), op.rope_style});
  const kc::KvCacheShape shape = kernel_kv_shape();
  const int64_t layer = op.layer;
  kc::store_kv({shape, layer_k(layer), layer_v(layer), k, op.v.as<const float>(), op.row_stride, layout_.kv_slots});
  return kc::paged_attention({shape, layer_k(layer), layer_v(layer), q, op.row_stride, op.out.as<float>(), 0,
                              op.num_heads, op.scale, op.sliding_window, attention_sequences_});
}

Status CpuBackend::silu_mul(Act gate_up, Act out, int64_t rows, int64_t width) {
  kc::silu_mul(gate_up.as<const float>(), gate_up.as<const float>() + width, 2 * width, out.as<float>(), rows, width);
  return Status::ok();
}

Status CpuBackend::add(Act x, Act y, int64_t count, float scale) {
  kc::add_scaled(x.as<float>(), y.as<const float>(), count, scale);
  return Status::ok();
}

Status CpuBackend::gather_rows(Act src, std::span<const int32_t> rows, int64_t width, Act dst) {
  for (size_t i = 0; i < rows.size(); ++i) {
    std::memcpy(dst.as<float>() + static_cast<int64_t>(i) * width, src.as<const float>() + static_cast<int64_t>(rows[i]) * width,
                static_cast<size_t>(width) * 4);
  }
  return Status::ok();
}

Status CpuBackend::download(Act src, int64_t count, std::span<float> dst) {
  if (static_cast<int64_t>(dst.size()) < count) return invalid_argument("download: destination too small");
  std::memcpy(dst.data(), src.as<const float>(), static_cast<size_t>(count) * 4);
  return Status::ok();
}

}  // namespace tessera::engine
