#include "kernels/cuda/prefill_attention.h"

#include <string>

namespace tessera::kernels::cuda {

Status prefill_attention(const PrefillAttentionParams& p, Stream stream) {
  if (p.head_dim != 64 && p.head_dim != 128) {
    return invalid_argument("cuda prefill_attention: head_dim " + std::to_string(p.head_dim) + " (64 or 128 are built)");
  }
  if (p.num_kv_heads <= 0 || p.num_q_heads <= 0 || p.num_q_heads % p.num_kv_heads != 0) {
    return invalid_argument("cuda prefill_attention: query heads must be a multiple of the KV heads");
  }
  if (p.num_tiles < 0 || p.page_size <= 0 || p.page_size > INT32_MAX || p.max_pages_per_seq <= 0 || !(p.scale > 0.0f) || p.sliding_window < 0 ||
      (p.q_stride != 0 && p.q_stride < p.num_q_heads * p.head_dim)) {
    return invalid_argument("cuda prefill_attention: bad shape, stride, window or scale");
  }
  const int64_t q_stride = p.q_stride > 0 ? p.q_stride : p.num_q_heads * p.head_dim;
  if (q_stride % 8 != 0 || (reinterpret_cast<uintptr_t>(p.q) | reinterpret_cast<uintptr_t>(p.k_cache) |
                            reinterpret_cast<uintptr_t>(p.v_cache)) % 16 != 0) {
    return invalid_argument("cuda prefill_attention: q rows and the caches must be 16-byte aligned");
  }
  if (p.num_tiles == 0) return Status::ok();
  if (!p.q || !p.k_cache || !p.v_cache || !p.block_tables || !p.tiles || !p.out) {
    return invalid_argument("cuda prefill_attention: null buffer");
  }
  if (const char* e = launch::prefill_attention(p, stream)) {
    return internal_error(std::string("cuda prefill_attention: ") + e);
  }
  return Status::ok();
}

void append_prefill_tiles(int32_t row_begin, int32_t num_rows, int32_t first_pos, int32_t table_row,
                          std::vector<PrefillTile>& tiles) {
  for (int32_t i = 0; i < num_rows; i += kPrefillTileRows) {
    const int32_t n = num_rows - i < kPrefillTileRows ? num_rows - i : kPrefillTileRows;
    tiles.push_back({row_begin + i, n, first_pos + i, table_row});
  }
}

}  // namespace tessera::kernels::cuda
