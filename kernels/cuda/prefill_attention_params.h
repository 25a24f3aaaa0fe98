// Parameters of paged prefill attention on the GPU (kernels/cuda/prefill_attention.h), apart
// from Status so that the CUDA translation unit sees them too.
#pragma once

#include <cstdint>

#include "kernels/cuda/decode_attention_params.h"

namespace tessera::kernels::cuda {

// A step's query rows grouped into tiles of up to kPrefillTileRows consecutive tokens of
// one sequence. Tile t covers rows [row_begin[t], row_begin[t] + num_rows[t]) of q and out,
// whose first row sits at position first_pos[t] of sequence table_row[t]; row i of the
// tile attends causally to that sequence's cached tokens [lo, first_pos + i] (itself
// included: its K and V were written to the cache first; lo from sliding_window).
inline constexpr int kPrefillTileRows = 128;

struct PrefillTile {
  int32_t row_begin = 0;
  int32_t num_rows = 0;
  int32_t first_pos = 0;
  int32_t table_row = 0;
};

struct PrefillAttentionParams : PagedAttention {
  const PrefillTile* tiles = nullptr;  // [num_tiles], device memory
  int64_t num_tiles = 0;
};

namespace launch {
const char* prefill_attention(const PrefillAttentionParams& p, Stream stream);
}  // namespace launch

}  // namespace tessera::kernels::cuda
