#include "kernels/cpu/attention.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/cpu/cpu_features.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define TESSERA_AVX2_FN __attribute__((target("avx2,fma")))
#endif

namespace tessera::kernels::cpu {
namespace {

float dot_scalar(const float* a, const float* b, int64_t n) {
  float s = 0;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

void axpy_scalar(float* y, float a, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

#if defined(__x86_64__)
TESSERA_AVX2_FN float dot_avx2(const float* a, const float* b, int64_t n) {
  __m256 acc0 = _mm256_setzero_ps();
  __m256 acc1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
  }
  for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
  const __m256 acc = _mm256_add_ps(acc0, acc1);
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  float r = _mm_cvtss_f32(s);
  for (; i < n; ++i) r += a[i] * b[i];
  return r;
}

TESSERA_AVX2_FN void axpy_avx2(float* y, float a, const float* x, int64_t n) {
  const __m256 av = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] += a * x[i];
}
#endif

using DotFn = float (*)(const float*, const float*, int64_t);
using AxpyFn = void (*)(float*, float, const float*, int64_t);

struct VectorOps {
  DotFn dot = dot_scalar;
  AxpyFn axpy = axpy_scalar;
};

VectorOps pick_ops() {
  VectorOps ops;
#if defined(__x86_64__)
  const CpuFeatures& f = cpu_features();
  if (f.avx2 && f.fma) ops = {dot_avx2, axpy_avx2};
#endif
  return ops;
}

}  // namespace

void store_kv(const StoreKvParams& p) {
  const int64_t width = p.shape.token_stride();
  const int64_t stride = p.kv_stride ? p.kv_stride : width;
  for (size_t t = 0; t < p.slots.size(); ++t) {
    const int64_t slot = p.slots[t];
    std::memcpy(p.k_cache + slot * width, p.k + static_cast<int64_t>(t) * stride, static_cast<size_t>(width) * 4);
    std::memcpy(p.v_cache + slot * width, p.v + static_cast<int64_t>(t) * stride, static_cast<size_t>(width) * 4);
  }
}

Status paged_attention(const AttentionParams& p) {
  const KvCacheShape& s = p.shape;
  if (s.num_kv_heads <= 0 || p.num_heads % s.num_kv_heads != 0 || s.page_size <= 0) {
    return invalid_argument("attention: num_heads must be a multiple of num_kv_heads");
  }
  for (const AttentionSequence& seq : p.sequences) {
    const int64_t context = seq.start_position + seq.num_tokens;
    const int64_t pages_needed = (context + s.page_size - 1) / s.page_size;
    if (static_cast<int64_t>(seq.page_table.size()) < pages_needed) {
      return invalid_argument("attention: page table has " + std::to_string(seq.page_table.size()) +
                              " pages, the context of " + std::to_string(context) + " tokens needs " +
                              std::to_string(pages_needed));
    }
    for (int64_t i = 0; i < pages_needed; ++i) {
      const int32_t page = seq.page_table[static_cast<size_t>(i)];
      if (page < 0 || page >= s.num_pages) {
        return invalid_argument("attention: page " + std::to_string(page) + " is outside the cache of " +
                                std::to_string(s.num_pages) + " pages");
      }
    }
  }

  // Work items: (sequence, token, kv head). Causal prefill items differ in cost, hence
  // the dynamic schedule; each item's arithmetic is the same whatever thread runs it.
  struct Item {
    int32_t seq;
    int32_t token;  // within the sequence
    int32_t kv_head;
  };
  std::vector<Item> items;
  for (size_t i = 0; i < p.sequences.size(); ++i) {
    for (int64_t t = 0; t < p.sequences[i].num_tokens; ++t) {
      for (int64_t g = 0; g < s.num_kv_heads; ++g) {
        items.push_back({static_cast<int32_t>(i), static_cast<int32_t>(t), static_cast<int32_t>(g)});
      }
    }
  }
  const VectorOps ops = pick_ops();
  const int64_t group = p.num_heads / s.num_kv_heads;
  const int64_t hd = s.head_dim;
  const int64_t token_stride = s.token_stride();
  const int64_t q_stride = p.q_stride ? p.q_stride : p.num_heads * hd;
  const int64_t out_stride = p.out_stride ? p.out_stride : p.num_heads * hd;
  const int64_t num_items = static_cast<int64_t>(items.size());

#pragma omp parallel if (num_items > 1)
  {
    std::vector<float> scores;
    std::vector<int64_t> offsets;  // element offset of each key/value row in the cache
#pragma omp for schedule(dynamic, 4)
    for (int64_t it = 0; it < num_items; ++it) {
      const Item& item = items[static_cast<size_t>(it)];
      const AttentionSequence& seq = p.sequences[static_cast<size_t>(item.seq)];
      const int64_t pos = seq.start_position + item.token;
      const int64_t lo = p.sliding_window > 0 ? std::max<int64_t>(0, pos - p.sliding_window + 1) : 0;
      const int64_t n = pos - lo + 1;
      scores.resize(static_cast<size_t>(group * n));
      offsets.resize(static_cast<size_t>(n));
      for (int64_t j = lo; j <= pos; ++j) {
        const int64_t slot = static_cast<int64_t>(seq.page_table[static_cast<size_t>(j / s.page_size)]) * s.page_size +
                             j % s.page_size;
        offsets[static_cast<size_t>(j - lo)] = slot * token_stride + item.kv_head * hd;
      }
      const int64_t tok = seq.token_begin + item.token;
      for (int64_t g = 0; g < group; ++g) {
        const float* q = p.q + tok * q_stride + (item.kv_head * group + g) * hd;
        float* sc = scores.data() + g * n;
        float mx = -INFINITY;
        for (int64_t j = 0; j < n; ++j) {
          const float* k = p.k_cache + offsets[static_cast<size_t>(j)];
          sc[j] = ops.dot(q, k, hd) * p.scale;
          mx = std::max(mx, sc[j]);
        }
        float sum = 0;
        for (int64_t j = 0; j < n; ++j) {
          sc[j] = std::exp(sc[j] - mx);
          sum += sc[j];
        }
        const float inv = 1.0f / sum;
        float* out = p.out + tok * out_stride + (item.kv_head * group + g) * hd;
        std::fill(out, out + hd, 0.0f);
        for (int64_t j = 0; j < n; ++j) {
          const float* v = p.v_cache + offsets[static_cast<size_t>(j)];
          ops.axpy(out, sc[j] * inv, v, hd);
        }
      }
    }
  }
  return Status::ok();
}

}  // namespace tessera::kernels::cpu
