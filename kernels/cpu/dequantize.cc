#include "kernels/cpu/dequantize.h"

#include <atomic>
#include <cmath>
#include <bit>
#include <cstring>
#include <string>

#include "kernels/cpu/cpu_features.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define TESSERA_HAVE_X86_KERNELS 1
#define TESSERA_AVX2 __attribute__((target("avx2,fma,f16c")))
#endif

namespace tessera::kernels::cpu {
namespace {

// Block layouts (ggml-common.h). Every multi-byte field is little-endian and unaligned
// inside the file, so fields are read with memcpy rather than through struct casts.
//   Q4_0  [d:f16][qs:16]                 element j: lo nibble of qs[j], j+16: hi nibble
//   Q4_1  [d:f16][m:f16][qs:16]          x = q*d + m
//   Q5_0  [d:f16][qh:u32][qs:16]         bit 5 of element j is bit j of qh
//   Q5_1  [d:f16][m:f16][qh:u32][qs:16]
//   Q8_0  [d:f16][qs:i8 x32]
//   Q4_K  [d:f16][dmin:f16][scales:12][qs:128]        8 sub-blocks of 32, 6-bit scale/min
//   Q5_K  [d:f16][dmin:f16][scales:12][qh:32][qs:128]
//   Q6_K  [ql:128][qh:64][scales:i8 x16][d:f16]        16 sub-blocks of 16
//   Q8_K  [d:f32][qs:i8 x256][bsums:i16 x16]
constexpr int64_t kQ4_0Bytes = 18;
constexpr int64_t kQ4_1Bytes = 20;
constexpr int64_t kQ5_0Bytes = 22;
constexpr int64_t kQ5_1Bytes = 24;
constexpr int64_t kQ8_0Bytes = 34;
constexpr int64_t kQ4_KBytes = 144;
constexpr int64_t kQ5_KBytes = 176;
constexpr int64_t kQ6_KBytes = 210;
constexpr int64_t kQ8_KBytes = 292;

std::atomic<bool> g_force_scalar{false};

uint16_t load_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

uint32_t load_u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

float load_f32(const uint8_t* p) {
  float v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

float load_f16(const uint8_t* p) { return fp16_to_fp32(load_u16(p)); }

// The 6-bit scale and min of sub-block j of a Q4_K/Q5_K block: sub-blocks 0..3 keep
// theirs in the low 6 bits of bytes 0..7; 4..7 split theirs between the nibbles of bytes
// 8..11 and the top 2 bits of bytes 0..7.
void k_scale_min(int j, const uint8_t* scales, uint8_t* scale, uint8_t* min) {
  if (j < 4) {
    *scale = scales[j] & 63;
    *min = scales[j + 4] & 63;
  } else {
    *scale = static_cast<uint8_t>((scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4));
    *min = static_cast<uint8_t>((scales[j + 4] >> 4) | ((scales[j] >> 6) << 4));
  }
}

// ---- scalar reference kernels: one call per block, y receives block_size floats ----------

void scalar_q4_0(const uint8_t* b, float* y) {
  const float d = load_f16(b);
  const uint8_t* qs = b + 2;
  for (int j = 0; j < 16; ++j) {
    y[j] = static_cast<float>((qs[j] & 0xF) - 8) * d;
    y[j + 16] = static_cast<float>((qs[j] >> 4) - 8) * d;
  }
}

void scalar_q4_1(const uint8_t* b, float* y) {
  const float d = load_f16(b);
  const float m = load_f16(b + 2);
  const uint8_t* qs = b + 4;
  for (int j = 0; j < 16; ++j) {
    y[j] = static_cast<float>(qs[j] & 0xF) * d + m;
    y[j + 16] = static_cast<float>(qs[j] >> 4) * d + m;
  }
}

void scalar_q5_0(const uint8_t* b, float* y) {
  const float d = load_f16(b);
  const uint32_t qh = load_u32(b + 2);
  const uint8_t* qs = b + 6;
  for (int j = 0; j < 16; ++j) {
    const int hi0 = static_cast<int>((qh >> j) & 1) << 4;
    const int hi1 = static_cast<int>((qh >> (j + 16)) & 1) << 4;
    y[j] = static_cast<float>(((qs[j] & 0xF) | hi0) - 16) * d;
    y[j + 16] = static_cast<float>(((qs[j] >> 4) | hi1) - 16) * d;
  }
}

void scalar_q5_1(const uint8_t* b, float* y) {
  const float d = load_f16(b);
  const float m = load_f16(b + 2);
  const uint32_t qh = load_u32(b + 4);
  const uint8_t* qs = b + 8;
  for (int j = 0; j < 16; ++j) {
    const int hi0 = static_cast<int>((qh >> j) & 1) << 4;
    const int hi1 = static_cast<int>((qh >> (j + 16)) & 1) << 4;
    y[j] = static_cast<float>((qs[j] & 0xF) | hi0) * d + m;
    y[j + 16] = static_cast<float>((qs[j] >> 4) | hi1) * d + m;
  }
}

void scalar_q8_0(const uint8_t* b, float* y) {
  const float d = load_f16(b);
  const auto* qs = reinterpret_cast<const int8_t*>(b + 2);
  for (int j = 0; j < 32; ++j) y[j] = static_cast<float>(qs[j]) * d;
}

void scalar_q4_k(const uint8_t* b, float* y) {
  const float d = load_f16(b);
  const float dmin = load_f16(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* q = b + 16;
  // Each 32 bytes of q hold two sub-blocks: low nibbles, then high nibbles.
  for (int j = 0; j < 8; j += 2, q += 32, y += 64) {
    uint8_t sc, mn;
    k_scale_min(j, scales, &sc, &mn);
    const float d1 = d * static_cast<float>(sc);
    const float m1 = dmin * static_cast<float>(mn);
    k_scale_min(j + 1, scales, &sc, &mn);
    const float d2 = d * static_cast<float>(sc);
    const float m2 = dmin * static_cast<float>(mn);
    for (int l = 0; l < 32; ++l) y[l] = d1 * static_cast<float>(q[l] & 0xF) - m1;
    for (int l = 0; l < 32; ++l) y[l + 32] = d2 * static_cast<float>(q[l] >> 4) - m2;
  }
}

void scalar_q5_k(const uint8_t* b, float* y) {
  const float d = load_f16(b);
  const float dmin = load_f16(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* qh = b + 16;
  const uint8_t* ql = b + 48;
  // Sub-block j takes its fifth bit from bit j of qh[l].
  for (int j = 0; j < 8; j += 2, ql += 32, y += 64) {
    uint8_t sc, mn;
    k_scale_min(j, scales, &sc, &mn);
    const float d1 = d * static_cast<float>(sc);
    const float m1 = dmin * static_cast<float>(mn);
    k_scale_min(j + 1, scales, &sc, &mn);
    const float d2 = d * static_cast<float>(sc);
    const float m2 = dmin * static_cast<float>(mn);
    for (int l = 0; l < 32; ++l) {
      const int q = (ql[l] & 0xF) | (((qh[l] >> j) & 1) << 4);
      y[l] = d1 * static_cast<float>(q) - m1;
    }
    for (int l = 0; l < 32; ++l) {
      const int q = (ql[l] >> 4) | (((qh[l] >> (j + 1)) & 1) << 4);
      y[l + 32] = d2 * static_cast<float>(q) - m2;
    }
  }
}

void scalar_q6_k(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const auto* sc = reinterpret_cast<const int8_t*>(b + 192);
  const float d = load_f16(b + 208);
  // Two halves of 128 elements; in each, element l + 32*k takes its low nibble from
  // ql[l + 32*(k&1)] (low or high nibble by k/2) and its top two bits from qh[l] >> 2k.
  for (int half = 0; half < 2; ++half, ql += 64, qh += 32, sc += 8, y += 128) {
    for (int l = 0; l < 32; ++l) {
      const int is = l / 16;
      const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l] = d * static_cast<float>(sc[is]) * static_cast<float>(q1);
      y[l + 32] = d * static_cast<float>(sc[is + 2]) * static_cast<float>(q2);
      y[l + 64] = d * static_cast<float>(sc[is + 4]) * static_cast<float>(q3);
      y[l + 96] = d * static_cast<float>(sc[is + 6]) * static_cast<float>(q4);
    }
  }
}

void scalar_q8_k(const uint8_t* b, float* y) {
  const float d = load_f32(b);
  const auto* qs = reinterpret_cast<const int8_t*>(b + 4);
  for (int j = 0; j < 256; ++j) y[j] = d * static_cast<float>(qs[j]);
}

using BlockKernel = void (*)(const uint8_t* block, float* y);

template <BlockKernel kKernel, int64_t kBlockSize, int64_t kBlockBytes>
void run_blocks(const uint8_t* src, float* dst, int64_t num_elements) {
  const int64_t num_blocks = num_elements / kBlockSize;
  for (int64_t i = 0; i < num_blocks; ++i) kKernel(src + i * kBlockBytes, dst + i * kBlockSize);
}

void scalar_f32(const uint8_t* src, float* dst, int64_t n) {
  std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
}

void scalar_f16(const uint8_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = load_f16(src + 2 * i);
}

void scalar_bf16(const uint8_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_fp32(load_u16(src + 2 * i));
}

using RowKernel = void (*)(const uint8_t* src, float* dst, int64_t num_elements);

RowKernel scalar_kernel(GgmlType type) {
  switch (type) {
    case GgmlType::kF32: return scalar_f32;
    case GgmlType::kF16: return scalar_f16;
    case GgmlType::kBF16: return scalar_bf16;
    case GgmlType::kQ4_0: return run_blocks<scalar_q4_0, 32, kQ4_0Bytes>;
    case GgmlType::kQ4_1: return run_blocks<scalar_q4_1, 32, kQ4_1Bytes>;
    case GgmlType::kQ5_0: return run_blocks<scalar_q5_0, 32, kQ5_0Bytes>;
    case GgmlType::kQ5_1: return run_blocks<scalar_q5_1, 32, kQ5_1Bytes>;
    case GgmlType::kQ8_0: return run_blocks<scalar_q8_0, 32, kQ8_0Bytes>;
    case GgmlType::kQ4_K: return run_blocks<scalar_q4_k, kQkK, kQ4_KBytes>;
    case GgmlType::kQ5_K: return run_blocks<scalar_q5_k, kQkK, kQ5_KBytes>;
    case GgmlType::kQ6_K: return run_blocks<scalar_q6_k, kQkK, kQ6_KBytes>;
    case GgmlType::kQ8_K: return run_blocks<scalar_q8_k, kQkK, kQ8_KBytes>;
    default: return nullptr;
  }
}

#if defined(TESSERA_HAVE_X86_KERNELS)
// ---- AVX2 kernels -----------------------------------------------------------------------
// Same operations in the same order as the scalar kernels: int -> float conversion, then
// a separate multiply and add/subtract (never a fused multiply-add, which rounds once
// instead of twice and would break bit-identity with the reference).

TESSERA_AVX2 inline __m256 u8x8_to_ps(__m128i bytes) {
  return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes));
}

TESSERA_AVX2 inline __m256 i8x8_to_ps(__m128i bytes) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
}

TESSERA_AVX2 void avx2_f16(const uint8_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * i));
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
  }
  for (; i < n; ++i) dst[i] = load_f16(src + 2 * i);
}

TESSERA_AVX2 void avx2_bf16(const uint8_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * i));
    const __m256i f = _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16);
    _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(f));
  }
  for (; i < n; ++i) dst[i] = bf16_to_fp32(load_u16(src + 2 * i));
}

TESSERA_AVX2 void avx2_q8_0(const uint8_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n / 32; ++i) {
    const uint8_t* b = src + i * kQ8_0Bytes;
    const __m256 d = _mm256_set1_ps(load_f16(b));
    float* y = dst + i * 32;
    for (int k = 0; k < 4; ++k) {
      const __m128i q = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(b + 2 + 8 * k));
      _mm256_storeu_ps(y + 8 * k, _mm256_mul_ps(i8x8_to_ps(q), d));
    }
  }
}

// Splits 16 packed bytes into their low nibbles (elements 0..15) and high nibbles (16..31).
TESSERA_AVX2 inline void split_nibbles16(const uint8_t* qs, __m128i* lo, __m128i* hi) {
  const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m128i mask = _mm_set1_epi8(0x0F);
  *lo = _mm_and_si128(q, mask);
  *hi = _mm_and_si128(_mm_srli_epi16(q, 4), mask);
}

TESSERA_AVX2 void avx2_q4_0(const uint8_t* src, float* dst, int64_t n) {
  const __m256i eight = _mm256_set1_epi32(8);
  for (int64_t i = 0; i < n / 32; ++i) {
    const uint8_t* b = src + i * kQ4_0Bytes;
    const __m256 d = _mm256_set1_ps(load_f16(b));
    __m128i nib[2];
    split_nibbles16(b + 2, &nib[0], &nib[1]);
    float* y = dst + i * 32;
    for (int k = 0; k < 4; ++k) {
      const __m128i part = k % 2 == 0 ? nib[k / 2] : _mm_srli_si128(nib[k / 2], 8);
      const __m256i q = _mm256_sub_epi32(_mm256_cvtepu8_epi32(part), eight);
      _mm256_storeu_ps(y + 8 * k, _mm256_mul_ps(_mm256_cvtepi32_ps(q), d));
    }
  }
}

TESSERA_AVX2 void avx2_q4_1(const uint8_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n / 32; ++i) {
    const uint8_t* b = src + i * kQ4_1Bytes;
    const __m256 d = _mm256_set1_ps(load_f16(b));
    const __m256 m = _mm256_set1_ps(load_f16(b + 2));
    __m128i nib[2];
    split_nibbles16(b + 4, &nib[0], &nib[1]);
    float* y = dst + i * 32;
    for (int k = 0; k < 4; ++k) {
      const __m128i part = k % 2 == 0 ? nib[k / 2] : _mm_srli_si128(nib[k / 2], 8);
      _mm256_storeu_ps(y + 8 * k, _mm256_add_ps(_mm256_mul_ps(u8x8_to_ps(part), d), m));
    }
  }
}

// y[0..31] = d * q[0..31] - m for 32 unsigned bytes already in a register.
TESSERA_AVX2 inline void store_affine32(__m256i q, float d_scalar, float m_scalar, float* y) {
  const __m256 d = _mm256_set1_ps(d_scalar);
  const __m256 m = _mm256_set1_ps(m_scalar);
  const __m128i q_lo = _mm256_castsi256_si128(q);
  const __m128i q_hi = _mm256_extracti128_si256(q, 1);
  _mm256_storeu_ps(y + 0, _mm256_sub_ps(_mm256_mul_ps(d, u8x8_to_ps(q_lo)), m));
  _mm256_storeu_ps(y + 8, _mm256_sub_ps(_mm256_mul_ps(d, u8x8_to_ps(_mm_srli_si128(q_lo, 8))), m));
  _mm256_storeu_ps(y + 16, _mm256_sub_ps(_mm256_mul_ps(d, u8x8_to_ps(q_hi)), m));
  _mm256_storeu_ps(y + 24, _mm256_sub_ps(_mm256_mul_ps(d, u8x8_to_ps(_mm_srli_si128(q_hi, 8))), m));
}

TESSERA_AVX2 void avx2_q4_k(const uint8_t* src, float* dst, int64_t n) {
  const __m256i mask = _mm256_set1_epi8(0x0F);
  for (int64_t i = 0; i < n / kQkK; ++i) {
    const uint8_t* b = src + i * kQ4_KBytes;
    const float d = load_f16(b);
    const float dmin = load_f16(b + 2);
    const uint8_t* scales = b + 4;
    const uint8_t* q = b + 16;
    float* y = dst + i * kQkK;
    for (int j = 0; j < 8; j += 2, q += 32, y += 64) {
      const __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q));
      uint8_t sc, mn;
      k_scale_min(j, scales, &sc, &mn);
      store_affine32(_mm256_and_si256(bytes, mask), d * static_cast<float>(sc),
                     dmin * static_cast<float>(mn), y);
      k_scale_min(j + 1, scales, &sc, &mn);
      store_affine32(_mm256_and_si256(_mm256_srli_epi16(bytes, 4), mask),
                     d * static_cast<float>(sc), dmin * static_cast<float>(mn), y + 32);
    }
  }
}

// y[0..31] = scale(l) * q[l] for 32 signed bytes, where the first 16 use scale0 and the
// last 16 scale1 (Q6_K's 16-element sub-blocks).
TESSERA_AVX2 inline void store_scaled32(__m256i q, float scale0, float scale1, float* y) {
  const __m256 s0 = _mm256_set1_ps(scale0);
  const __m256 s1 = _mm256_set1_ps(scale1);
  const __m128i q_lo = _mm256_castsi256_si128(q);
  const __m128i q_hi = _mm256_extracti128_si256(q, 1);
  _mm256_storeu_ps(y + 0, _mm256_mul_ps(s0, i8x8_to_ps(q_lo)));
  _mm256_storeu_ps(y + 8, _mm256_mul_ps(s0, i8x8_to_ps(_mm_srli_si128(q_lo, 8))));
  _mm256_storeu_ps(y + 16, _mm256_mul_ps(s1, i8x8_to_ps(q_hi)));
  _mm256_storeu_ps(y + 24, _mm256_mul_ps(s1, i8x8_to_ps(_mm_srli_si128(q_hi, 8))));
}

// Bits shift..shift+1 of every byte of h, moved to bits 4..5. The 16-bit shift carries
// bits across byte boundaries; the mask drops them.
TESSERA_AVX2 inline __m256i q6_high_bits(__m256i h, int shift, __m256i low2) {
  return _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, shift), low2), 4);
}

TESSERA_AVX2 void avx2_q6_k(const uint8_t* src, float* dst, int64_t n) {
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const __m256i low2 = _mm256_set1_epi8(0x03);
  const __m256i bias = _mm256_set1_epi8(32);
  for (int64_t i = 0; i < n / kQkK; ++i) {
    const uint8_t* b = src + i * kQ6_KBytes;
    const uint8_t* ql = b;
    const uint8_t* qh = b + 128;
    const auto* sc = reinterpret_cast<const int8_t*>(b + 192);
    const float d = load_f16(b + 208);
    float* y = dst + i * kQkK;
    for (int half = 0; half < 2; ++half, ql += 64, qh += 32, sc += 8, y += 128) {
      const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ql));
      const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ql + 32));
      const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qh));
      const __m256i q1 = _mm256_or_si256(_mm256_and_si256(a, low4), q6_high_bits(h, 0, low2));
      const __m256i q2 = _mm256_or_si256(_mm256_and_si256(c, low4), q6_high_bits(h, 2, low2));
      const __m256i q3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(a, 4), low4), q6_high_bits(h, 4, low2));
      const __m256i q4 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(c, 4), low4), q6_high_bits(h, 6, low2));
      const __m256i qs[4] = {q1, q2, q3, q4};
      for (int k = 0; k < 4; ++k) {
        const float s0 = d * static_cast<float>(sc[2 * k]);
        const float s1 = d * static_cast<float>(sc[2 * k + 1]);
        store_scaled32(_mm256_sub_epi8(qs[k], bias), s0, s1, y + 32 * k);
      }
    }
  }
}

RowKernel avx2_kernel(GgmlType type) {
  switch (type) {
    case GgmlType::kF16: return avx2_f16;
    case GgmlType::kBF16: return avx2_bf16;
    case GgmlType::kQ8_0: return avx2_q8_0;
    case GgmlType::kQ4_0: return avx2_q4_0;
    case GgmlType::kQ4_1: return avx2_q4_1;
    case GgmlType::kQ4_K: return avx2_q4_k;
    case GgmlType::kQ6_K: return avx2_q6_k;
    // The rest are rare in shipped models; the reference kernel serves them.
    default: return scalar_kernel(type);
  }
}
#endif  // TESSERA_HAVE_X86_KERNELS

bool cpu_has_avx2() {
#if defined(TESSERA_HAVE_X86_KERNELS)
  const CpuFeatures& f = cpu_features();
  return f.avx2 && f.fma && f.f16c;
#else
  return false;
#endif
}

}  // namespace

uint16_t fp32_to_fp16(float value) {
  uint32_t x;
  std::memcpy(&x, &value, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t abs = x & 0x7FFFFFFFu;
  if (abs > 0x7F800000u) return static_cast<uint16_t>(sign | 0x7E00u);  // NaN
  if (abs >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u);  // overflow to inf
  if (abs < 0x38800000u) {  // subnormal half (or zero)
    const float f = std::fabs(value) * 16777216.0f;  // 2^24: half subnormal units
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(std::nearbyint(f)));
  }
  const uint32_t mant = abs & 0x7FFFFFu;
  uint32_t h = ((abs >> 23) - 112) << 10 | (mant >> 13);
  const uint32_t rest = mant & 0x1FFFu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
  return static_cast<uint16_t>(sign | h);
}

float fp16_to_fp32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exponent = (h >> 10) & 0x1F;
  const uint32_t mantissa = h & 0x3FF;
  if (exponent == 0) {
    // Zero or subnormal: mantissa * 2^-24 is exact in float.
    const float magnitude = static_cast<float>(mantissa) * 0x1p-24f;
    return std::bit_cast<float>(sign | std::bit_cast<uint32_t>(magnitude));
  }
  if (exponent == 0x1F) {
    const uint32_t quiet = mantissa != 0 ? 0x00400000u : 0u;
    return std::bit_cast<float>(sign | 0x7F800000u | (mantissa << 13) | quiet);
  }
  // Rebias the exponent from 15 to 127.
  return std::bit_cast<float>(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

float bf16_to_fp32(uint16_t bits) { return std::bit_cast<float>(static_cast<uint32_t>(bits) << 16); }

void force_scalar_dequantize(bool force) { g_force_scalar.store(force, std::memory_order_relaxed); }

DequantizePath active_dequantize_path() {
  if (g_force_scalar.load(std::memory_order_relaxed) || !cpu_has_avx2()) return DequantizePath::kScalar;
  return DequantizePath::kAvx2;
}

Status dequantize(const DequantizeParams& params) {
  const auto traits = ggml_type_traits(params.type);
  if (!traits) {
    return invalid_argument("dequantize: unknown ggml type id " +
                            std::to_string(static_cast<uint32_t>(params.type)));
  }
  const auto num_elements = static_cast<int64_t>(params.dst.size());
  const auto expected_bytes = row_size_bytes(params.type, num_elements);
  if (!expected_bytes) {
    return invalid_argument("dequantize: " + std::to_string(num_elements) + " elements of " +
                            std::string(traits->name) + " are not a whole number of " +
                            std::to_string(traits->block_size) + "-element blocks");
  }
  if (static_cast<int64_t>(params.src.size()) != *expected_bytes) {
    return invalid_argument("dequantize: " + std::to_string(num_elements) + " elements of " +
                            std::string(traits->name) + " take " + std::to_string(*expected_bytes) +
                            " bytes, got " + std::to_string(params.src.size()));
  }
  DequantizePath path = params.path == DequantizePath::kAuto ? active_dequantize_path() : params.path;
  if (path == DequantizePath::kAvx2 && !cpu_has_avx2()) {
    return failed_precondition("dequantize: the AVX2 path needs AVX2, FMA and F16C, which this CPU lacks");
  }
  RowKernel kernel = scalar_kernel(params.type);
#if defined(TESSERA_HAVE_X86_KERNELS)
  if (path == DequantizePath::kAvx2) kernel = avx2_kernel(params.type);
#endif
  if (kernel == nullptr) {
    return unimplemented("dequantize: no kernel for ggml type " + std::string(traits->name));
  }
  if (num_elements == 0) return Status::ok();
  kernel(reinterpret_cast<const uint8_t*>(params.src.data()), params.dst.data(), num_elements);
  return Status::ok();
}

}  // namespace tessera::kernels::cpu
