// Paged prefill attention on the GPU, flash-attention-2 style: a block takes a tile of up
// to 128 query tokens of one sequence and one query head, walks that sequence's cached K/V
// in tiles of 64 tokens (gathered from its pages into shared memory), computes the tile's
// logits with bf16 tensor-core MMAs (mma.sync m16n8k16, fp32 accumulation), keeps a running
// softmax per query row in fp32 registers, and accumulates P·V with MMAs into registers
// (the weights never leave them: the logits' accumulator layout is P's operand layout). Causal within the step's chunk and
// over any cached prefix (chunked prefill, prefix-cache hits); variable lengths through the
// tile list; head_dim 64 or 128; any GQA ratio. Plain C++ header.
#pragma once

#include <span>
#include <vector>

#include "kernels/cuda/prefill_attention_params.h"
#include "tessera/common/status.h"

namespace tessera::kernels::cuda {

// INVALID_ARGUMENT for shapes the kernel does not handle; the launch error otherwise; never
// synchronizes.
[[nodiscard]] Status prefill_attention(const PrefillAttentionParams& p, Stream stream);

// Appends the tiles of one sequence's chunk: rows [row_begin, row_begin + num_rows) at
// positions first_pos.. of block-table row table_row.
void append_prefill_tiles(int32_t row_begin, int32_t num_rows, int32_t first_pos, int32_t table_row,
                          std::vector<PrefillTile>& tiles);

}  // namespace tessera::kernels::cuda
