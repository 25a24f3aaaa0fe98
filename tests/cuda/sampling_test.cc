// kernels/cuda/sampling: argmax picks each row's largest logit, the lowest index among
// equal maxima, and never a NaN (-1 for a row with no usable logit), over vocabularies
// from a handful to Llama 3's 128k, on fp32 and bf16 rows.
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
  for (const bool bf16 : {false, true}) {
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
        if (r == 4) {
          for (int64_t i = 0; i < vocab; ++i) logits[r * stride + i] = std::numeric_limits<float>::quiet_NaN();
        }
        // bf16 rows are compared as the device sees them: rounded.
        if (bf16) {
          for (int64_t i = 0; i < stride; ++i) logits[r * stride + i] = to_float(to_bf16(logits[r * stride + i]));
        }
        int32_t best = -1;
        for (int64_t i = 0; i < vocab; ++i) {
          const float v = logits[r * stride + i];
          if (std::isnan(v) || v == -std::numeric_limits<float>::infinity()) continue;
          if (best < 0 || v > logits[r * stride + best]) best = static_cast<int32_t>(i);
        }
        want[r] = best;
      }
      DeviceBuffer<int32_t> d_out(rows);
      d_out.poison();
      INFO("vocab " << vocab << (bf16 ? " bf16" : " fp32"));
      if (bf16) {
        std::vector<Bf16> bits(logits.size());
        for (size_t i = 0; i < bits.size(); ++i) bits[i] = to_bf16(logits[i]);
        DeviceBuffer<Bf16> d_logits(bits);
        REQUIRE(argmax({d_logits.ptr, stride, d_out.ptr, rows, vocab, true}, nullptr).is_ok());
      } else {
        DeviceBuffer<float> d_logits(logits);
        REQUIRE(argmax({d_logits.ptr, stride, d_out.ptr, rows, vocab, false}, nullptr).is_ok());
      }
      CHECK(d_out.download() == want);
    }
  }
}
