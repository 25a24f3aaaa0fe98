// Causal attention over a paged KV cache, for a flat batch mixing prefill chunks and
// decode tokens of many sequences ("nopad": no padding between sequences).
//
// A layer's cache holds K and V as [num_pages, page_size, num_kv_heads, head_dim] in
// float32 or IEEE half (half the memory traffic of decode attention; the reference path
// keeps float32).
// Token j of a sequence lives in page page_table[j / page_size], slot j % page_size, so a
// sequence's context can sit in any pages, shared prefix pages included.
#pragma once

#include <cstdint>
#include <span>

#include "tessera/common/status.h"

namespace tessera::kernels::cpu {

enum class KvDtype { kF32, kF16 };
inline int64_t kv_dtype_bytes(KvDtype dtype) { return dtype == KvDtype::kF16 ? 2 : 4; }

struct KvCacheShape {
  KvDtype dtype = KvDtype::kF32;
  int64_t num_pages = 0;
  int64_t page_size = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t token_stride() const { return num_kv_heads * head_dim; }
};

// Writes k/v of each token [num_tokens, num_kv_heads * head_dim] into cache slot
// slots[t] (= page * page_size + offset). Precondition: slots are inside the cache.
struct StoreKvParams {
  KvCacheShape shape;
  void* k_cache = nullptr;  // elements of shape.dtype
  void* v_cache = nullptr;
  const float* k = nullptr;
  const float* v = nullptr;
  int64_t kv_stride = 0;  // row stride of k and v
  std::span<const int64_t> slots;
};
void store_kv(const StoreKvParams& p);

// One sequence's slice of the batch: tokens [token_begin, token_begin + num_tokens) of
// q/out sit at positions start_position.. and attend to positions 0..their own.
struct AttentionSequence {
  int64_t token_begin = 0;
  int64_t num_tokens = 0;
  int64_t start_position = 0;
  std::span<const int32_t> page_table;  // covers start_position + num_tokens tokens
};

struct AttentionParams {
  KvCacheShape shape;
  const void* k_cache = nullptr;  // elements of shape.dtype
  const void* v_cache = nullptr;
  const float* q = nullptr;  // [num_tokens, num_heads * head_dim]
  int64_t q_stride = 0;
  float* out = nullptr;      // [num_tokens, num_heads * head_dim]
  int64_t out_stride = 0;
  int64_t num_heads = 0;     // a multiple of shape.num_kv_heads (grouped-query attention)
  float scale = 1.0f;        // usually 1 / sqrt(head_dim)
  int64_t sliding_window = 0;  // > 0: attend to the last sliding_window positions only
  std::span<const AttentionSequence> sequences;
};

// INVALID_ARGUMENT when a page table is too short or names a page outside the cache.
[[nodiscard]] Status paged_attention(const AttentionParams& p);

}  // namespace tessera::kernels::cpu
