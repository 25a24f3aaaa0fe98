// kernels/cpu/matmul: every weight type on every path this CPU runs agrees with
// "dequantize the weights, multiply in double", and results do not depend on the batch.
#include "kernels/cpu/matmul.h"

#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/dequantize.h"

using namespace tessera::kernels::cpu;

namespace {

void put_f16(std::byte* p, float v) {
  const uint16_t b = fp32_to_fp16(v);
  std::memcpy(p, &b, 2);
}

// Random blocks whose f16 scale fields hold sane values (random bits could be NaN).
std::vector<std::byte> random_weights(GgmlType type, int64_t n, int64_t k, std::mt19937& rng) {
  const auto traits = *ggml_type_traits(type);
  const int64_t row_bytes = *row_size_bytes(type, k);
  std::vector<std::byte> data(static_cast<size_t>(n * row_bytes));
  std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
  if (type == GgmlType::kF32) {
    for (int64_t i = 0; i < n * k; ++i) {
      const float v = uni(rng);
      std::memcpy(data.data() + 4 * i, &v, 4);
    }
    return data;
  }
  if (type == GgmlType::kF16 || type == GgmlType::kBF16) {
    for (int64_t i = 0; i < n * k; ++i) {
      const float v = uni(rng);
      uint16_t b;
      if (type == GgmlType::kF16) {
        b = fp32_to_fp16(v);
      } else {
        uint32_t x;
        std::memcpy(&x, &v, 4);
        b = static_cast<uint16_t>(x >> 16);
      }
      std::memcpy(data.data() + 2 * i, &b, 2);
    }
    return data;
  }
  for (auto& b : data) b = static_cast<std::byte>(rng() & 0xFF);
  const int64_t num_blocks = n * k / traits.block_size;
  for (int64_t i = 0; i < num_blocks; ++i) {
    std::byte* blk = data.data() + i * traits.block_bytes;
    switch (type) {
      case GgmlType::kQ4_0:
      case GgmlType::kQ5_0:
      case GgmlType::kQ8_0: put_f16(blk, 0.01f + 0.02f * std::fabs(uni(rng))); break;
      case GgmlType::kQ4_1:
      case GgmlType::kQ5_1:
      case GgmlType::kQ4_K:
      case GgmlType::kQ5_K:
        put_f16(blk, 0.01f + 0.02f * std::fabs(uni(rng)));
        put_f16(blk + 2, 0.05f * uni(rng));
        break;
      case GgmlType::kQ6_K: put_f16(blk + 208, 0.001f + 0.002f * std::fabs(uni(rng))); break;
      default: break;
    }
  }
  return data;
}

std::vector<float> dequantized(GgmlType type, const std::vector<std::byte>& w, int64_t n, int64_t k) {
  std::vector<float> out(static_cast<size_t>(n * k));
  REQUIRE(dequantize({type, w, out}).is_ok());
  return out;
}

// What the integer kernels compute exactly: activations rounded to their int8 blocks.
std::vector<float> as_quantized(const std::vector<float>& x, int64_t m, int64_t k) {
  std::vector<float> out(x.size());
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t b = 0; b < k / 32; ++b) {
      const float* xb = x.data() + r * k + b * 32;
      float amax = 0;
      for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(xb[i]));
      const float d = amax / 127.0f;
      const float inv = d > 0 ? 1.0f / d : 0.0f;
      for (int i = 0; i < 32; ++i) {
        out[static_cast<size_t>(r * k + b * 32 + i)] = d * static_cast<float>(std::clamp<int>(static_cast<int>(std::nearbyint(xb[i] * inv)), -127, 127));
      }
    }
  }
  return out;
}

std::vector<MatmulPath> paths_here() {
  std::vector<MatmulPath> paths{MatmulPath::kScalar};
  const CpuFeatures& f = cpu_features();
  if (f.avx2 && f.fma && f.f16c) paths.push_back(MatmulPath::kAvx2);
  if (f.avx2 && f.fma && f.f16c && f.avx512f && f.avx512bw && f.avx512vl && f.avx512_vnni) {
    paths.push_back(MatmulPath::kAvx512);
  }
  return paths;
}

std::vector<float> run(GgmlType type, const std::vector<std::byte>& w, int64_t n, int64_t k, const std::vector<float>& x,
                       int64_t m, MatmulPath path, const std::vector<float>* bias = nullptr) {
  std::vector<float> y(static_cast<size_t>(m * n), NAN);
  MatmulOutput out{{type, w, n, k}, y.data(), 0, bias ? bias->data() : nullptr};
  MatmulWorkspace ws;
  MatmulParams params{x.data(), m, k, 0, {&out, 1}, path};
  const auto status = matmul(params, ws);
  REQUIRE(status.is_ok());
  return y;
}

}  // namespace

TEST_CASE("matmul: every type and path matches dequantize-then-multiply", "[matmul]") {
  const GgmlType types[] = {GgmlType::kF32,  GgmlType::kF16,  GgmlType::kBF16, GgmlType::kQ4_0,
                            GgmlType::kQ4_1, GgmlType::kQ5_0, GgmlType::kQ5_1, GgmlType::kQ8_0,
                            GgmlType::kQ4_K, GgmlType::kQ5_K, GgmlType::kQ6_K};
  std::mt19937 rng(1234);
  for (GgmlType type : types) {
    const int64_t k = matmul_k_multiple(type) == 256 ? 512 : 96;
    const int64_t n = 13;  // not a multiple of the 4-row tiles
    const int64_t m = 7;   // not a multiple of the column tiles
    const auto w = random_weights(type, n, k, rng);
    const auto wf = dequantized(type, w, n, k);
    std::vector<float> x(static_cast<size_t>(m * k));
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (float& v : x) v = normal(rng);
    std::vector<float> bias(static_cast<size_t>(n));
    for (float& v : bias) v = normal(rng);
    const bool is_float = type == GgmlType::kF32 || type == GgmlType::kF16 || type == GgmlType::kBF16;
    const auto xe = is_float ? x : as_quantized(x, m, k);
    for (MatmulPath path : paths_here()) {
      INFO("type " << ggml_type_name(type) << ", path " << matmul_path_name(path));
      const auto y = run(type, w, n, k, x, m, path, &bias);
      for (int64_t r = 0; r < m; ++r) {
        for (int64_t c = 0; c < n; ++c) {
          double want = bias[static_cast<size_t>(c)];
          double scale = std::fabs(want);
          for (int64_t i = 0; i < k; ++i) {
            const double t = static_cast<double>(wf[static_cast<size_t>(c * k + i)]) * xe[static_cast<size_t>(r * k + i)];
            want += t;
            scale += std::fabs(t);
          }
          INFO("row " << r << " col " << c);
          REQUIRE(std::fabs(y[static_cast<size_t>(r * n + c)] - want) <= 1e-5 * scale + 1e-6);
        }
      }
    }
  }
}

TEST_CASE("matmul: a row's result is bitwise the same alone or in any batch", "[matmul]") {
  std::mt19937 rng(99);
  for (GgmlType type : {GgmlType::kQ4_1, GgmlType::kQ8_0, GgmlType::kQ4_K, GgmlType::kF32}) {
    const int64_t k = 256, n = 24;
    const auto w = random_weights(type, n, k, rng);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> x(static_cast<size_t>(9 * k));
    for (float& v : x) v = normal(rng);
    for (MatmulPath path : paths_here()) {
      INFO("type " << ggml_type_name(type) << ", path " << matmul_path_name(path));
      const auto all = run(type, w, n, k, x, 9, path);
      for (int64_t r = 0; r < 9; ++r) {
        std::vector<float> one(x.begin() + r * k, x.begin() + (r + 1) * k);
        const auto y = run(type, w, n, k, one, 1, path);
        REQUIRE(std::memcmp(y.data(), all.data() + r * n, static_cast<size_t>(n) * 4) == 0);
      }
    }
  }
}

TEST_CASE("matmul: shapes and types that disagree are refused", "[matmul]") {
  std::vector<std::byte> w(20 * 4);
  std::vector<float> x(64), y(4);
  MatmulWorkspace ws;
  MatmulOutput out{{GgmlType::kQ4_1, w, 4, 32}, y.data(), 0, nullptr};
  // k of the input (64) differs from the weight's (32).
  REQUIRE(matmul({x.data(), 1, 64, 0, {&out, 1}}, ws).code() == tessera::StatusCode::kInvalidArgument);
  // Too few bytes for [4, 64] Q4_1.
  out.weight.k = 64;
  REQUIRE(matmul({x.data(), 1, 64, 0, {&out, 1}}, ws).code() == tessera::StatusCode::kInvalidArgument);
  // A type without a kernel.
  out.weight = {GgmlType::kQ2_K, w, 1, 256};
  std::vector<float> x256(256);
  REQUIRE(matmul({x256.data(), 1, 256, 0, {&out, 1}}, ws).code() == tessera::StatusCode::kInvalidArgument);
}
