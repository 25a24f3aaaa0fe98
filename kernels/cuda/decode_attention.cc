#include "kernels/cuda/decode_attention.h"

#include <algorithm>
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
  if (p.num_seqs < 0 || p.page_size <= 0 || p.page_size > INT32_MAX || p.max_pages_per_seq <= 0 || !(p.scale > 0.0f) || p.sliding_window < 0 ||
      (p.q_stride != 0 && p.q_stride < p.num_q_heads * p.head_dim)) {
    return invalid_argument("cuda decode_attention: bad shape, stride, window or scale");
  }
  const bool split = p.split_tokens > 0 && p.max_splits > 1;
  if (split && (p.split_tokens % 64 != 0 || !p.workspace)) {
    return invalid_argument("cuda decode_attention: split_tokens must be a multiple of 64, with a workspace");
  }
  if (p.num_seqs == 0) return Status::ok();
  if (!p.q || !p.k_cache || !p.v_cache || !p.block_tables || !p.seq_lens || !p.out) {
    return invalid_argument("cuda decode_attention: null buffer");
  }
  if (const char* e = launch::decode_attention(p, stream)) return internal_error(std::string("cuda decode_attention: ") + e);
  return Status::ok();
}

DecodeSplit plan_decode_split(int64_t num_seqs, int64_t num_q_heads, int64_t num_kv_heads, int64_t head_dim,
                              int64_t max_seq_len, int num_sms) {
  DecodeSplit plan;
  const int64_t blocks = num_seqs * num_kv_heads;
  const int64_t wanted = 2 * static_cast<int64_t>(num_sms);
  const int64_t most = (max_seq_len + 63) / 64;  // pieces of at least 64 tokens
  if (blocks <= 0 || blocks >= wanted || most <= 1) return plan;
  const int64_t splits = std::min((wanted + blocks - 1) / blocks, most);
  if (splits <= 1) return plan;
  plan.split_tokens = ((max_seq_len + splits - 1) / splits + 63) / 64 * 64;
  plan.max_splits = (max_seq_len + plan.split_tokens - 1) / plan.split_tokens;
  if (plan.max_splits <= 1) return DecodeSplit{};
  plan.workspace_bytes = static_cast<size_t>(num_seqs * num_q_heads * plan.max_splits * (head_dim + 2)) * sizeof(float);
  return plan;
}

}  // namespace tessera::kernels::cuda
