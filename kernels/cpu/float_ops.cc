#include "kernels/cpu/float_ops.h"

#include <cmath>
#include <string>

#include "kernels/cpu/dequantize.h"

namespace tessera::kernels::cpu {
namespace {

// Below this many elements a parallel region costs more than it saves.
constexpr int64_t kParallelMin = 1 << 14;

}  // namespace

void rms_norm(const RmsNormParams& p) {
  const int64_t xs = p.x_stride ? p.x_stride : p.width;
  const int64_t os = p.out_stride ? p.out_stride : p.width;
#pragma omp parallel for if (p.rows * p.width >= kParallelMin)
  for (int64_t r = 0; r < p.rows; ++r) {
    const float* x = p.x + r * xs;
    float* out = p.out + r * os;
    // Sum of squares in double: close to the exactly rounded mean whatever the width.
    double sum = 0;
    for (int64_t i = 0; i < p.width; ++i) sum += static_cast<double>(x[i]) * x[i];
    const float mean = static_cast<float>(sum / static_cast<double>(p.width));
    const float inv = 1.0f / std::sqrt(mean + p.eps);
    for (int64_t i = 0; i < p.width; ++i) out[i] = p.weight[i] * (x[i] * inv);
  }
}

void add_scaled(float* x, const float* y, int64_t count, float scale) {
  if (scale == 1.0f) {
#pragma omp parallel for simd if (count >= 4 * kParallelMin)
    for (int64_t i = 0; i < count; ++i) x[i] += y[i];
  } else {
#pragma omp parallel for simd if (count >= 4 * kParallelMin)
    for (int64_t i = 0; i < count; ++i) x[i] += scale * y[i];
  }
}

void silu_mul(const float* gate, const float* up, int64_t in_stride, float* out, int64_t rows, int64_t width) {
#pragma omp parallel for if (rows * width >= kParallelMin)
  for (int64_t r = 0; r < rows; ++r) {
    const float* g = gate + r * in_stride;
    const float* u = up + r * in_stride;
    float* o = out + r * width;
    for (int64_t i = 0; i < width; ++i) o[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
  }
}

void rope_tables(std::span<const int32_t> positions, std::span<const float> inv_freq, float* cos_out, float* sin_out) {
  const int64_t half = static_cast<int64_t>(inv_freq.size());
  for (size_t t = 0; t < positions.size(); ++t) {
    // The angle is rounded to float first, as Hugging Face computes it (float32 product).
    const float pos = static_cast<float>(positions[t]);
    for (int64_t i = 0; i < half; ++i) {
      const float angle = pos * inv_freq[static_cast<size_t>(i)];
      cos_out[static_cast<int64_t>(t) * half + i] = static_cast<float>(std::cos(static_cast<double>(angle)));
      sin_out[static_cast<int64_t>(t) * half + i] = static_cast<float>(std::sin(static_cast<double>(angle)));
    }
  }
}

void apply_rope(const RopeParams& p) {
  const int64_t half = p.head_dim / 2;
  const int64_t xs = p.x_stride ? p.x_stride : p.num_heads * p.head_dim;
#pragma omp parallel for if (p.num_tokens * p.num_heads * p.head_dim >= kParallelMin)
  for (int64_t t = 0; t < p.num_tokens; ++t) {
    const float* c = p.cos + t * half;
    const float* s = p.sin + t * half;
    for (int64_t h = 0; h < p.num_heads; ++h) {
      float* x = p.x + t * xs + h * p.head_dim;
      if (p.style == RopeStyle::kHalf) {
        for (int64_t i = 0; i < half; ++i) {
          const float a = x[i];
          const float b = x[i + half];
          x[i] = a * c[i] - b * s[i];
          x[i + half] = b * c[i] + a * s[i];
        }
      } else {
        for (int64_t i = 0; i < half; ++i) {
          const float a = x[2 * i];
          const float b = x[2 * i + 1];
          x[2 * i] = a * c[i] - b * s[i];
          x[2 * i + 1] = b * c[i] + a * s[i];
        }
      }
    }
  }
}

Status embedding_lookup(const EmbeddingParams& p) {
  const auto row_bytes = row_size_bytes(p.type, p.width);
  if (!row_bytes || static_cast<int64_t>(p.table.size()) != *row_bytes * p.vocab) {
    return invalid_argument("embedding: table size does not match [" + std::to_string(p.vocab) + ", " +
                            std::to_string(p.width) + "] " + std::string(ggml_type_name(p.type)));
  }
  for (size_t t = 0; t < p.token_ids.size(); ++t) {
    const int32_t id = p.token_ids[t];
    if (id < 0 || id >= p.vocab) {
      return invalid_argument("embedding: token id " + std::to_string(id) + " is outside the vocabulary [0, " +
                              std::to_string(p.vocab) + ")");
    }
  }
  const int64_t n = static_cast<int64_t>(p.token_ids.size());
  Status failed;
  for (int64_t t = 0; t < n; ++t) {
    const int64_t id = p.token_ids[static_cast<size_t>(t)];
    std::span<float> out(p.out + t * p.width, static_cast<size_t>(p.width));
    Status s = dequantize({p.type, p.table.subspan(static_cast<size_t>(id * *row_bytes), static_cast<size_t>(*row_bytes)),
                           out});
    if (!s.is_ok()) return s.with_context("embedding");
    if (p.scale != 1.0f) {
      for (float& v : out) v *= p.scale;
    }
  }
  return Status::ok();
}

}  // namespace tessera::kernels::cpu
