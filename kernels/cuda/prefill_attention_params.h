// Parameters of paged prefill attention on the GPU (kernels/cuda/prefill_attention.h), apart
// from Status so that the CUDA translation unit sees them too.
#pragma once

#include <cstdint>

#include "kernels/cuda/layer_ops_params.h"

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

struct PrefillAttentionParams {
  const Bf16* q = nullptr;              // [rows, q_stride]: num_q_heads heads of head_dim
  int64_t q_stride = 0;                 // 0: num_q_heads * head_dim
  const Bf16* k_cache = nullptr;        // [num_slots, num_kv_heads, head_dim]
  const Bf16* v_cache = nullptr;
  const int32_t* block_tables = nullptr;  // [*, max_pages_per_seq] page ids
  const PrefillTile* tiles = nullptr;     // [num_tiles], device memory
  Bf16* out = nullptr;                    // [rows, num_q_heads * head_dim]
  int64_t num_tiles = 0;
  int64_t num_q_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;  // 64 or 128
  int64_t page_size = 0;
  int64_t max_pages_per_seq = 0;
  float scale = 0.0f;
  int64_t sliding_window = 0;  // > 0: a row attends to its last sliding_window tokens only
};

namespace launch {
const char* prefill_attention(const PrefillAttentionParams& p, Stream stream);
}  // namespace launch

}  // namespace tessera::kernels::cuda
