// kernels/cuda/sampling: argmax picks each row's largest logit, the lowest index among
// equal maxima, and never a NaN, over vocabularies from a handful to Llama 3's 128k.
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "cuda_test_main.h"
#include "cuda_test_support.h"
#include "kernels/cuda/sampling.h"

using namespace tessera::kernels::cuda;
using namespace tessera::cuda_testing;

TEST_CASE("argmax picks the largest logit and the lowest index on ties", "[cuda][sampling]") {
  std::mt19937 rng(31);
  std::normal_distribution<float> d(0.0f, 3.0f);
  for (int64_t vocab : {1, 7, 49152, 128256}) {
    const int64_t rows = 9, stride = vocab + 3;
    std::vector<float> logits(rows * stride, 1e30f);  // the padding past vocab must not count
    std::vector<int32_t> want(rows);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t i = 0; i < vocab; ++i) logits[r * stride + i] = d(rng);
      if (r == 1 && vocab > 5) {  // a tie: the lower index wins
        logits[r * stride + 2] = logits[r * stride + vocab - 1] = 100.0f;
      }
      if (r == 2 && vocab > 5) logits[r * stride + 0] = std::numeric_limits<float>::quiet_NaN();
      if (r == 3) {
        for (int64_t i = 0; i < vocab; ++i) logits[r * stride + i] = -std::numeric_limits<float>::infinity();
      }
      int32_t best = 0;
      for (int64_t i = 1; i < vocab; ++i) {
        const float v = logits[r * stride + i], b = logits[r * stride + best];
        if (!std::isnan(v) && (std::isnan(b) || v > b)) best = static_cast<int32_t>(i);
      }
      want[r] = best;
    }
    DeviceBuffer<float> d_logits(logits);
    DeviceBuffer<int32_t> d_out(rows);
    d_out.poison();
    REQUIRE(argmax({d_logits.ptr, stride, d_out.ptr, rows, vocab}, nullptr).is_ok());
    INFO("vocab " << vocab);
    CHECK(d_out.download() == want);
  }
}
