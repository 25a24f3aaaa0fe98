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
  CHECK((*gemm)->num_cached_shapes() == 4);  // the cuBLASLt shapes
}

TEST_CASE("gemm refuses bad shapes and does nothing for no rows", "[cuda][gemm]") {
  auto gemm = Gemm::create(0);
  REQUIRE(gemm.is_ok());
  CHECK((*gemm)->run({nullptr, nullptr, nullptr, 4, 0, 8}, nullptr).code() == tessera::StatusCode::kInvalidArgument);
  CHECK((*gemm)->run({nullptr, nullptr, nullptr, 0, 8, 8}, nullptr).is_ok());
}
