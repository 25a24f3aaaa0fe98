#include "kernels/cpu/attention.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/dequantize.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define TESSERA_AVX2_FN __attribute__((target("avx2,fma,f16c")))
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

// One query head against n cached keys/values: scores, softmax, weighted sum of values.
// offsets[j]: element offset of key/value j of this KV head in the caches.
struct HeadArgs {
  const float* q;
  const void* k_cache;
  const void* v_cache;
  const int64_t* offsets;
  int64_t n;
  int64_t head_dim;
  float scale;
  float* scores;  // [n] scratch
  float* out;     // [head_dim]
};

// Softmax of scores in place; returns 1 / sum. Shared by every path (same rounding).
float softmax_in_place(float* sc, int64_t n) {
  float mx = -INFINITY;
  for (int64_t j = 0; j < n; ++j) mx = std::max(mx, sc[j]);
  float sum = 0;
  for (int64_t j = 0; j < n; ++j) {
    sc[j] = std::exp(sc[j] - mx);
    sum += sc[j];
  }
  return 1.0f / sum;
}

// A cache row as float32: the row itself, or converted into buf (half caches).
template <typename T>
const float* row_f32(const void* cache, int64_t offset, int64_t n, float* buf) {
  if constexpr (std::is_same_v<T, float>) {
    return static_cast<const float*>(cache) + offset;
  } else {
    const uint16_t* h = static_cast<const uint16_t*>(cache) + offset;
    for (int64_t i = 0; i < n; ++i) buf[i] = fp16_to_fp32(h[i]);
    return buf;
  }
}

// One head, a cache row at a time, with the given vector primitives: the scalar kernel,
// and the AVX2 kernel for head sizes without a register-resident one below.
template <typename T, float (*Dot)(const float*, const float*, int64_t), float (*Softmax)(float*, int64_t),
          void (*Axpy)(float*, float, const float*, int64_t)>
void head_rows(const HeadArgs& a) {
  std::vector<float> buf(static_cast<size_t>(a.head_dim));
  for (int64_t j = 0; j < a.n; ++j) {
    a.scores[j] = Dot(a.q, row_f32<T>(a.k_cache, a.offsets[j], a.head_dim, buf.data()), a.head_dim) * a.scale;
  }
  const float inv = Softmax(a.scores, a.n);
  std::fill(a.out, a.out + a.head_dim, 0.0f);
  for (int64_t j = 0; j < a.n; ++j) {
    Axpy(a.out, a.scores[j] * inv, row_f32<T>(a.v_cache, a.offsets[j], a.head_dim, buf.data()), a.head_dim);
  }
}

#if defined(__x86_64__)
// e^x for x <= 0 (Cephes' expf polynomial on 8 lanes; within 2 ulp of expf).
TESSERA_AVX2_FN inline __m256 exp_avx2(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.3f));
  const __m256 fx = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  const __m256i pow2 = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(pow2));
}

// softmax_in_place with 8 lanes: max, exp and sum vectorized (sum in a fixed lane order).
TESSERA_AVX2_FN float softmax_avx2(float* sc, int64_t n) {
  float mx = -INFINITY;
  for (int64_t j = 0; j < n; ++j) mx = std::max(mx, sc[j]);
  const __m256 mv = _mm256_set1_ps(mx);
  __m256 sum8 = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 e = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(sc + j), mv));
    _mm256_storeu_ps(sc + j, e);
    sum8 = _mm256_add_ps(sum8, e);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, sum8);
  float sum = 0;
  for (float v : lanes) sum += v;
  for (; j < n; ++j) {
    sc[j] = std::exp(sc[j] - mx);
    sum += sc[j];
  }
  return 1.0f / sum;
}

template <typename T>
TESSERA_AVX2_FN inline __m256 load8(const void* cache, int64_t offset) {
  if constexpr (std::is_same_v<T, float>) {
    return _mm256_loadu_ps(static_cast<const float*>(cache) + offset);
  } else {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(cache) + offset)));
  }
}

template <int64_t kBytes, typename T>
inline void prefetch_row(const T* row) {
  for (int64_t off = 0; off < kBytes; off += 64) {
    _mm_prefetch(reinterpret_cast<const char*>(row) + off, _MM_HINT_T0);
  }
}

// head_dim = 8 * kVecs: q and the output stay in registers across all keys.
template <int kVecs, typename T>
TESSERA_AVX2_FN void head_avx2(const HeadArgs& a) {
  __m256 q[kVecs];
  for (int i = 0; i < kVecs; ++i) q[i] = _mm256_loadu_ps(a.q + 8 * i);
  // Scores four keys at a time: their four partial-sum vectors reduce together.
  int64_t j = 0;
  // Rows sit wherever their pages are: fetch a few keys ahead of use.
  constexpr int64_t kAhead = 8;
  constexpr int64_t kRowBytes = kVecs * 8 * sizeof(T);
  for (; j + 4 <= a.n; j += 4) {
    __m256 acc[4];
    for (int t = 0; t < 4; ++t) {
      if (j + t + kAhead < a.n) prefetch_row<kRowBytes>(static_cast<const T*>(a.k_cache) + a.offsets[j + t + kAhead]);
      const int64_t k = a.offsets[j + t];
      acc[t] = _mm256_mul_ps(q[0], load8<T>(a.k_cache, k));
      for (int i = 1; i < kVecs; ++i) acc[t] = _mm256_fmadd_ps(q[i], load8<T>(a.k_cache, k + 8 * i), acc[t]);
    }
    const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(acc[0], acc[1]), _mm256_hadd_ps(acc[2], acc[3]));
    const __m128 sums = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    _mm_storeu_ps(a.scores + j, _mm_mul_ps(sums, _mm_set1_ps(a.scale)));
  }
  for (; j < a.n; ++j) {
    const int64_t k = a.offsets[j];
    __m256 acc = _mm256_mul_ps(q[0], load8<T>(a.k_cache, k));
    for (int i = 1; i < kVecs; ++i) acc = _mm256_fmadd_ps(q[i], load8<T>(a.k_cache, k + 8 * i), acc);
    // The same reduction tree as the 4-key path, so a key's score does not depend on
    // where the group boundaries fall.
    const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(acc, acc), _mm256_hadd_ps(acc, acc));
    a.scores[j] = _mm_cvtss_f32(_mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1))) * a.scale;
  }
  const float inv = softmax_avx2(a.scores, a.n);
  __m256 out[kVecs];
  for (int i = 0; i < kVecs; ++i) out[i] = _mm256_setzero_ps();
  for (int64_t jv = 0; jv < a.n; ++jv) {
    if (jv + kAhead < a.n) prefetch_row<kRowBytes>(static_cast<const T*>(a.v_cache) + a.offsets[jv + kAhead]);
    const int64_t v = a.offsets[jv];
    const __m256 w = _mm256_set1_ps(a.scores[jv] * inv);
    for (int i = 0; i < kVecs; ++i) out[i] = _mm256_fmadd_ps(w, load8<T>(a.v_cache, v + 8 * i), out[i]);
  }
  for (int i = 0; i < kVecs; ++i) _mm256_storeu_ps(a.out + 8 * i, out[i]);
}
#endif

using HeadFn = void (*)(const HeadArgs&);


// The kernel for this head size on this CPU; one choice per call, so every head of a
// batch is computed the same way.
template <typename T>
HeadFn pick_head_kernel(int64_t head_dim) {
#if defined(__x86_64__)
  const CpuFeatures& f = cpu_features();
  if (f.avx2 && f.fma && f.f16c) {
    if (head_dim == 64) return head_avx2<8, T>;
    if (head_dim == 128) return head_avx2<16, T>;
    return head_rows<T, dot_avx2, softmax_avx2, axpy_avx2>;
  }
#endif
  return head_rows<T, dot_scalar, softmax_in_place, axpy_scalar>;
}

void store_half_scalar(const float* src, uint16_t* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = fp32_to_fp16(src[i]);
}

#if defined(__x86_64__)
TESSERA_AVX2_FN void store_half_f16c(const float* src, uint16_t* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  for (; i < n; ++i) dst[i] = fp32_to_fp16(src[i]);
}
#endif

// Both round to nearest even, so the cache holds the same bits either way.
void store_half(const float* src, uint16_t* dst, int64_t n) {
#if defined(__x86_64__)
  if (cpu_features().f16c && cpu_features().avx2) return store_half_f16c(src, dst, n);
#endif
  store_half_scalar(src, dst, n);
}

}  // namespace

void store_kv(const StoreKvParams& p) {
  const int64_t width = p.shape.token_stride();
  const int64_t stride = p.kv_stride ? p.kv_stride : width;
  for (size_t t = 0; t < p.slots.size(); ++t) {
    const int64_t slot = p.slots[t];
    const float* k = p.k + static_cast<int64_t>(t) * stride;
    const float* v = p.v + static_cast<int64_t>(t) * stride;
    if (p.shape.dtype == KvDtype::kF32) {
      std::memcpy(static_cast<float*>(p.k_cache) + slot * width, k, static_cast<size_t>(width) * 4);
      std::memcpy(static_cast<float*>(p.v_cache) + slot * width, v, static_cast<size_t>(width) * 4);
    } else {
      store_half(k, static_cast<uint16_t*>(p.k_cache) + slot * width, width);
      store_half(v, static_cast<uint16_t*>(p.v_cache) + slot * width, width);
    }
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
  const HeadFn head_kernel = s.dtype == KvDtype::kF32 ? pick_head_kernel<float>(s.head_dim)
                                                      : pick_head_kernel<uint16_t>(s.head_dim);
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
      scores.resize(static_cast<size_t>(n));
      offsets.resize(static_cast<size_t>(n));
      for (int64_t j = lo; j <= pos; ++j) {
        const int64_t slot = static_cast<int64_t>(seq.page_table[static_cast<size_t>(j / s.page_size)]) * s.page_size +
                             j % s.page_size;
        offsets[static_cast<size_t>(j - lo)] = slot * token_stride + item.kv_head * hd;
      }
      const int64_t tok = seq.token_begin + item.token;
      for (int64_t g = 0; g < group; ++g) {
        const int64_t head = item.kv_head * group + g;
        head_kernel({p.q + tok * q_stride + head * hd, p.k_cache, p.v_cache, offsets.data(), n, hd, p.scale,
                     scores.data(), p.out + tok * out_stride + head * hd});
      }
    }
  }
  return Status::ok();
}

}  // namespace tessera::kernels::cpu
