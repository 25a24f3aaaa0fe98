// Paged decode attention on the GPU: one new token per sequence attends to its cached
// tokens, the query heads of a GQA group together so each K and V row is read once per
// group. Online softmax in fp32 (flash-decoding's recurrence), one block per (sequence,
// KV head), its warps splitting the tokens and merging their partial softmax states at
// the end. head_dim 64 or 128, groups of up to 8 query heads. Plain C++ header.
#pragma once

#include "kernels/cuda/decode_attention_params.h"
#include "tessera/common/status.h"

namespace tessera::kernels::cuda {

// Parameters: decode_attention_params.h. INVALID_ARGUMENT for shapes outside what the
// kernel handles; the launch error (INTERNAL) otherwise; never synchronizes.
[[nodiscard]] Status decode_attention(const DecodeAttentionParams& p, Stream stream);

}  // namespace tessera::kernels::cuda
