// kernels/cuda/gemm (cuBLASLt bf16, and its own GEMV for m = 1) against a float64 reference: C = A·Wᵀ with the weight
// stored [out_features, in_features], with and without accumulating into C, over shapes
// from one decode row to a prefill block, including sizes that are not multiples of 8
// where cuBLASLt allows them. The output is poisoned before each plain run.
#include <cmath>
#include <random>
#include <vector>

#include "cuda_test_main.h"
#include "cuda_test_support.h"
#include "kernels/cuda/gemm.h"

using namespace tessera::kernels::cuda;
using namespace tessera::cuda_testing;

TEST_CASE("bf16 gemm matches a float64 reference and caches one plan per shape", "[cuda][gemm]") {
  auto gemm = Gemm::create();
  REQUIRE(gemm.is_ok());
  std::mt19937 rng(21);
  struct Shape {
    int64_t m, n, k;
  };
  // m = 1 takes the streaming GEMV kernel (n = 100 leaves a block's last warps idle);
  // larger m goes through cuBLASLt.
  const Shape shapes[] = {{1, 576, 576},  {1, 100, 4096},   {7, 1536, 576},
                          {64, 64, 4096}, {300, 1024, 256}, {128, 49152, 64}};
  for (const Shape& sh : shapes) {
    for (bool accumulate : {false, true}) {
      INFO("m " << sh.m << " n " << sh.n << " k " << sh.k << " accumulate " << accumulate);
      const auto a = random_bf16(sh.m * sh.k, rng);
      const auto w = random_bf16(sh.n * sh.k, rng, 0.05f);
      const auto c0 = random_bf16(sh.m * sh.n, rng);
      DeviceBuffer<Bf16> d_a(a), d_w(w), d_c(sh.m * sh.n);
      if (accumulate) {
        d_c.upload(c0);
      } else {
        d_c.poison();
      }
      REQUIRE((*gemm)->run({d_a.ptr, d_w.ptr, d_c.ptr, sh.m, sh.n, sh.k, accumulate}, nullptr).is_ok());
      const auto c = d_c.download();
      for (int64_t i = 0; i < sh.m; ++i) {
        for (int64_t j = 0; j < sh.n; ++j) {
          double sum = accumulate ? to_float(c0[i * sh.n + j]) : 0.0;
          double scale = 0;
          for (int64_t t = 0; t < sh.k; ++t) {
            const double prod = static_cast<double>(to_float(a[i * sh.k + t])) * to_float(w[j * sh.k + t]);
            sum += prod;
            scale += prod * prod;
          }
          // Rounding to bf16 at the end, fp32 sums on the way: 2 ulps of the larger of the
          // result and the typical size of a partial sum.
          REQUIRE(close(c[i * sh.n + j], sum, std::max(std::abs(sum), std::sqrt(scale))));
        }
      }
    }
  }
  CHECK((*gemm)->num_cached_shapes() == 8);  // the cuBLASLt shapes, each with and without accumulating
}

TEST_CASE("gemm refuses bad shapes and does nothing for no rows", "[cuda][gemm]") {
  auto gemm = Gemm::create(0);
  REQUIRE(gemm.is_ok());
  CHECK((*gemm)->run({nullptr, nullptr, nullptr, 4, 0, 8}, nullptr).code() == tessera::StatusCode::kInvalidArgument);
  CHECK((*gemm)->run({nullptr, nullptr, nullptr, 0, 8, 8}, nullptr).is_ok());
}

TEST_CASE("the one-row GEMV computes silu(gate)·up from stacked gate and up weights", "[cuda][gemm]") {
  auto gemm = Gemm::create();
  REQUIRE(gemm.is_ok());
  std::mt19937 rng(23);
  for (const int64_t n : {int64_t{100}, int64_t{1536}}) {
    const int64_t k = 576;
    INFO("n " << n << " k " << k);
    const auto a = random_bf16(k, rng);
    const auto w = random_bf16(2 * n * k, rng, 0.05f);  // gate rows, then up rows
    DeviceBuffer<Bf16> d_a(a), d_w(w), d_c(n);
    d_c.poison();
    GemmParams p{d_a.ptr, d_w.ptr, d_c.ptr, 1, n, k};
    p.gate_up_silu = true;
    REQUIRE((*gemm)->run(p, nullptr).is_ok());
    const auto c = d_c.download();
    for (int64_t j = 0; j < n; ++j) {
      double gate = 0, up = 0, scale = 0;
      for (int64_t i = 0; i < k; ++i) {
        gate += static_cast<double>(to_float(a[i])) * to_float(w[j * k + i]);
        up += static_cast<double>(to_float(a[i])) * to_float(w[(n + j) * k + i]);
        scale += std::pow(to_float(a[i]) * to_float(w[j * k + i]), 2);
      }
      // Rounded where the unfused path rounds: each projection, silu, the product.
      const double g = round_bf16(gate), u = round_bf16(up);
      const double want = round_bf16(round_bf16(g / (1.0 + std::exp(-g))) * u);
      // A projection off by its rounding moves the product by about that much times the other.
      REQUIRE(close(c[j], want, std::max(std::abs(want), std::sqrt(scale) * std::max(std::abs(u), 1.0)), 4));
    }
  }
  DeviceBuffer<Bf16> a(2 * 64), w(2 * 64 * 64), c(2 * 64);
  GemmParams two{a.ptr, w.ptr, c.ptr, 2, 64, 64};
  two.gate_up_silu = true;
  CHECK((*gemm)->run(two, nullptr).code() == tessera::StatusCode::kInvalidArgument);
}

TEST_CASE("the one-row GEMV normalizes its row first when given a norm weight, as rms_norm does", "[cuda][gemm]") {
  auto gemm = Gemm::create();
  REQUIRE(gemm.is_ok());
  std::mt19937 rng(29);
  // k = 28672 stages 56 KiB of row: past the default 48 KiB of dynamic shared memory.
  struct Shape {
    int64_t n, k;
    bool gate_up;
  };
  const Shape shapes[] = {{100, 576, false}, {1536, 4096, false}, {300, 576, true}, {64, 28672, false}};
  for (const Shape& sh : shapes) {
    INFO("n " << sh.n << " k " << sh.k << " gate_up " << sh.gate_up);
    const float eps = 1e-5f;
    const auto a = random_bf16(sh.k, rng, 3.0f);
    const auto g = random_bf16(sh.k, rng);
    const int64_t rows = sh.gate_up ? 2 * sh.n : sh.n;
    const auto w = random_bf16(rows * sh.k, rng, 0.05f);
    DeviceBuffer<Bf16> d_a(a), d_g(g), d_w(w), d_c(sh.n);
    d_c.poison();
    GemmParams p{d_a.ptr, d_w.ptr, d_c.ptr, 1, sh.n, sh.k};
    p.gate_up_silu = sh.gate_up;
    p.norm_weight = d_g.ptr;
    p.norm_eps = eps;
    REQUIRE((*gemm)->run(p, nullptr).is_ok());
    const auto c = d_c.download();
    // The normalized row, rounded as rms_norm rounds it.
    double sum_sq = 0;
    for (int64_t i = 0; i < sh.k; ++i) sum_sq += static_cast<double>(to_float(a[i])) * to_float(a[i]);
    const double inv_rms = 1.0 / std::sqrt(sum_sq / static_cast<double>(sh.k) + eps);
    std::vector<double> x(static_cast<size_t>(sh.k));
    for (int64_t i = 0; i < sh.k; ++i) {
      x[static_cast<size_t>(i)] = round_bf16(round_bf16(to_float(a[i]) * inv_rms) * to_float(g[i]));
    }
    for (int64_t j = 0; j < sh.n; ++j) {
      double dot[2] = {0, 0}, scale = 0;
      for (int r = 0; r < (sh.gate_up ? 2 : 1); ++r) {
        for (int64_t i = 0; i < sh.k; ++i) {
          const double prod = x[static_cast<size_t>(i)] * to_float(w[(r * sh.n + j) * sh.k + i]);
          dot[r] += prod;
          if (r == 0) scale += prod * prod;
        }
      }
      if (!sh.gate_up) {
        // fp32 inv_rms may round a normalized element to the neighbouring bf16 value: a few
        // ulps of the typical partial sum.
        REQUIRE(close(c[j], dot[0], std::max(std::abs(dot[0]), std::sqrt(scale)), 4));
      } else {
        const double gt = round_bf16(dot[0]), u = round_bf16(dot[1]);
        const double want = round_bf16(round_bf16(gt / (1.0 + std::exp(-gt))) * u);
        REQUIRE(close(c[j], want, std::max(std::abs(want), std::sqrt(scale) * std::max(std::abs(u), 1.0)), 4));
      }
    }
  }
  // Only the GEMV fuses the norm.
  DeviceBuffer<Bf16> a(2 * 64), g(64), w(64 * 64), c(2 * 64);
  GemmParams two{a.ptr, w.ptr, c.ptr, 2, 64, 64};
  two.norm_weight = g.ptr;
  CHECK((*gemm)->run(two, nullptr).code() == tessera::StatusCode::kInvalidArgument);
}
