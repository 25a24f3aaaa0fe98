#include "kernels/cuda/decode_attention.h"

#include <string>

namespace tessera::kernels::cuda {

Status decode_attention(const DecodeAttentionParams& p, Stream stream) {
  if (p.head_dim != 64 && p.head_dim != 128) {
    return invalid_argument("cuda decode_attention: head_dim " + std::to_string(p.head_dim) + " (64 or 128 are built)");
  }
  if (p.num_kv_heads <= 0 || p.num_q_heads % p.num_kv_heads != 0 || p.num_q_heads / p.num_kv_heads > 8 ||
      p.num_q_heads == 0) {
    return invalid_argument("cuda decode_attention: query heads must be 1 to 8 per KV head");
  }
  if (p.num_seqs < 0 || p.page_size <= 0 || p.max_pages_per_seq <= 0 || !(p.scale > 0.0f)) {
    return invalid_argument("cuda decode_attention: bad shape or scale");
  }
  if (p.num_seqs == 0) return Status::ok();
  if (!p.q || !p.k_cache || !p.v_cache || !p.block_tables || !p.seq_lens || !p.out) {
    return invalid_argument("cuda decode_attention: null buffer");
  }
  if (const char* e = launch::decode_attention(p, stream)) return internal_error(std::string("cuda decode_attention: ") + e);
  return Status::ok();
}

}  // namespace tessera::kernels::cuda
