// Parameters of paged decode attention on the GPU (kernels/cuda/decode_attention.h), apart
// from Status so that the CUDA translation unit sees them too.
#pragma once

#include <cstdint>

#include "kernels/cuda/layer_ops_params.h"

namespace tessera::kernels::cuda {

// What both attention kernels read: query rows, the paged caches and their block tables,
// the head shapes. Token i of block-table row b lives in slot
// block_tables[b][i / page_size] * page_size + i % page_size of both caches. The query
// heads of a group share one KV head (GQA): num_q_heads = group * num_kv_heads.
struct PagedAttention {
  const Bf16* q = nullptr;                // [rows, q_stride]: num_q_heads heads of head_dim
  int64_t q_stride = 0;                   // elements between query rows; 0: num_q_heads * head_dim
  const Bf16* k_cache = nullptr;          // [num_slots, num_kv_heads, head_dim]
  const Bf16* v_cache = nullptr;          // [num_slots, num_kv_heads, head_dim]
  const int32_t* block_tables = nullptr;  // [*, max_pages_per_seq] page ids
  Bf16* out = nullptr;                    // [rows, num_q_heads * head_dim]
  int64_t num_q_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;  // 64 or 128
  int64_t page_size = 0;
  int64_t max_pages_per_seq = 0;
  float scale = 0.0f;  // usually 1 / sqrt(head_dim)
  // > 0: a row attends to its last sliding_window tokens only (itself included).
  int64_t sliding_window = 0;
};

// One new token per query row attends to the cached tokens of its sequence (itself
// included: its K and V were written to the cache first).
struct DecodeAttentionParams : PagedAttention {
  const int32_t* seq_lens = nullptr;  // [num_seqs] tokens in the cache, at least 1
  // [num_seqs]: the block-table row each query row reads; nullptr: row i reads row i. With
  // it the kernel also runs prefill (chunked, over a cached prefix): one query row per new
  // token, seq_lens[r] = that token's position + 1 (causal), table_rows[r] = its sequence
  // (reading K/V once per query row: prefill_attention.h is the fast way).
  const int32_t* table_rows = nullptr;
  // [num_seqs]: which row of q, out, seq_lens and table_rows query row s is; nullptr: row
  // s. Lets a step that mixes prefill chunks and decodes give only its decode rows to this
  // kernel.
  const int32_t* rows = nullptr;
  int64_t num_seqs = 0;
  // Split-KV (flash-decoding): each sequence's context is cut into pieces of split_tokens,
  // each run by its own block, and the pieces' softmax states are merged after. 0 (or at
  // least the longest sequence): no split. A multiple of 64 otherwise; plan_decode_split()
  // picks it, and the workspace size that goes with it.
  int64_t split_tokens = 0;
  int64_t max_splits = 1;     // ceil(longest sequence / split_tokens)
  float* workspace = nullptr;  // [num_seqs, num_q_heads, max_splits, head_dim + 2] when split
};

namespace launch {
const char* decode_attention(const DecodeAttentionParams& p, Stream stream);
}  // namespace launch

}  // namespace tessera::kernels::cuda
