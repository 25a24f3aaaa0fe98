#include "kernels/cuda/layer_ops.h"

#include <string>

namespace tessera::kernels::cuda {

namespace {

Status result(const char* what, const char* cuda_error) {
  if (cuda_error == nullptr) return Status::ok();
  return internal_error(std::string(what) + ": " + cuda_error);
}

}  // namespace

Status embedding(const EmbeddingParams& p, Stream stream) {
  if (p.num_tokens < 0 || p.width <= 0) return invalid_argument("cuda embedding: bad shape");
  if (p.num_tokens == 0) return Status::ok();
  if (!p.table || !p.token_ids || !p.out) return invalid_argument("cuda embedding: null buffer");
  if (p.width % 8 == 0 && ((reinterpret_cast<uintptr_t>(p.table) | reinterpret_cast<uintptr_t>(p.out)) % 16) != 0) {
    return invalid_argument("cuda embedding: table and out must be 16-byte aligned");
  }
  return result("cuda embedding", launch::embedding(p, stream));
}

Status rms_norm(const RmsNormParams& p, Stream stream) {
  if (p.rows < 0 || p.width <= 0 || !(p.eps >= 0.0f)) return invalid_argument("cuda rms_norm: bad shape or eps");
  if (p.rows == 0) return Status::ok();
  if (!p.x || !p.weight || !p.out) return invalid_argument("cuda rms_norm: null buffer");
  return result("cuda rms_norm", launch::rms_norm(p, stream));
}

Status silu_mul(const SiluMulParams& p, Stream stream) {
  if (p.rows < 0 || p.width <= 0) return invalid_argument("cuda silu_mul: bad shape");
  if (p.rows == 0) return Status::ok();
  if (!p.gate_up || !p.out) return invalid_argument("cuda silu_mul: null buffer");
  return result("cuda silu_mul", launch::silu_mul(p, stream));
}

Status rope_and_cache_kv(const RopeKvParams& p, Stream stream) {
  if (p.num_tokens < 0 || p.num_q_heads < 0 || p.num_kv_heads <= 0 || p.head_dim <= 0 || p.head_dim % 2 != 0) {
    return invalid_argument("cuda rope_and_cache_kv: bad shape (head_dim must be even)");
  }
  if (p.q_stride < p.num_q_heads * p.head_dim || p.k_stride < p.num_kv_heads * p.head_dim ||
      p.v_stride < p.num_kv_heads * p.head_dim) {
    return invalid_argument("cuda rope_and_cache_kv: a row stride is shorter than its heads");
  }
  if (p.num_tokens == 0) return Status::ok();
  if ((!p.q && p.num_q_heads > 0) || !p.k || !p.v || !p.positions || !p.slots || !p.inv_freq || !p.k_cache ||
      !p.v_cache) {
    return invalid_argument("cuda rope_and_cache_kv: null buffer");
  }
  return result("cuda rope_and_cache_kv", launch::rope_and_cache_kv(p, stream));
}

Status add(const AddParams& p, Stream stream) {
  if (p.count < 0) return invalid_argument("cuda add: bad size");
  if (p.count == 0) return Status::ok();
  if (!p.x || !p.y) return invalid_argument("cuda add: null buffer");
  return result("cuda add", launch::add(p, stream));
}

Status gather_rows(const GatherRowsParams& p, Stream stream) {
  if (p.num_rows < 0 || p.width <= 0) return invalid_argument("cuda gather_rows: bad shape");
  if (p.num_rows == 0) return Status::ok();
  if (!p.src || !p.rows || !p.dst) return invalid_argument("cuda gather_rows: null buffer");
  return result("cuda gather_rows", launch::gather_rows(p, stream));
}

Status add_bias(const AddBiasParams& p, Stream stream) {
  if (p.rows < 0 || p.n <= 0 || p.y_stride < p.n) return invalid_argument("cuda add_bias: bad shape");
  if (p.rows == 0) return Status::ok();
  if (!p.y || !p.bias) return invalid_argument("cuda add_bias: null buffer");
  return result("cuda add_bias", launch::add_bias(p, stream));
}

}  // namespace tessera::kernels::cuda
