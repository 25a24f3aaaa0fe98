// Paged decode attention on the GPU: one new token per sequence attends to its cached
// tokens, the query heads of a GQA group together so each K and V row is read once per
// group. One block per (sequence, KV head, piece of the context): its warps stream 16-token
// K/V tiles through shared memory and compute the logits and the weighted V rows on the
// tensor cores (the group's heads as the rows of the products), with an fp32 online
// softmax; with split-KV a second kernel merges the pieces (flash-decoding). head_dim 64
// or 128, groups of up to 8 query heads. Plain C++ header.
#pragma once

#include "kernels/cuda/decode_attention_params.h"
#include "tessera/common/status.h"

namespace tessera::kernels::cuda {

// Parameters: decode_attention_params.h. INVALID_ARGUMENT for shapes outside what the
// kernel handles; the launch error (INTERNAL) otherwise; never synchronizes.
[[nodiscard]] Status decode_attention(const DecodeAttentionParams& p, Stream stream);

// How to split a step's contexts so the GPU has enough blocks: none when sequences × KV
// heads already give two blocks per SM, else pieces of at least 64 tokens. (Not splitting
// short contexts was measured slower: batch 1 at context 128-192 on the H100 went from
// 6.36 to 6.49-6.76 ms per 8B step with 8 blocks doing the attention.)
struct DecodeSplit {
  int64_t split_tokens = 0;
  int64_t max_splits = 1;
  size_t workspace_bytes = 0;  // 0 without a split
};
DecodeSplit plan_decode_split(int64_t num_seqs, int64_t num_q_heads, int64_t num_kv_heads, int64_t head_dim,
                              int64_t max_seq_len, int num_sms);

}  // namespace tessera::kernels::cuda
