// kernels/cuda/sampling: argmax picks each row's largest logit, the lowest index among
// equal maxima, and never a NaN (-1 for a row with no usable logit), over vocabularies
// from a handful to Llama 3's 128k, on fp32 and bf16 rows; and full sampling on the device
// draws the CPU sampler's tokens.
#include <cmath>
#include <limits>
#include <random>
#include <utility>
#include <vector>

#include "cuda_test_main.h"
#include "cuda_test_support.h"
#include "kernels/cuda/sampling.h"
#include "worker/engine/sampler.h"

using namespace tessera::kernels::cuda;
using namespace tessera::cuda_testing;

TEST_CASE("argmax picks the largest logit and the lowest index on ties", "[cuda][sampling]") {
  std::mt19937 rng(31);
  std::normal_distribution<float> d(0.0f, 3.0f);
  for (const bool bf16 : {false, true}) {
    // Padded rows start off 16-byte boundaries (one logit at a time); unpadded bf16 rows of
    // a vocabulary that is a multiple of 8 take the eight-at-a-time loads.
    for (const auto& [vocab, pad] : {std::pair<int64_t, int64_t>{1, 3}, {7, 3}, {49152, 3}, {128256, 3}, {49152, 0},
                                    {128256, 0}, {32003, 0}}) {
      const int64_t rows = 9, stride = vocab + pad;
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
      INFO("vocab " << vocab << " pad " << pad << (bf16 ? " bf16" : " fp32"));
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

// The device sampler against the CPU's SequenceSampler on the same rows: for each row, the
// sampler built from the same options and history gives the CPU's token through sample()
// and the device's inputs through device_row(). Weights are computed with different exp
// implementations and summed in a different order, so a draw that lands within rounding of
// a boundary between two tokens may go either way: at most 1% of draws may differ, and
// greedy rows never.
TEST_CASE("device sampling draws the CPU sampler's tokens", "[cuda][sampling]") {
  using tessera::engine::SamplingOptions;
  using tessera::engine::SequenceSampler;
  std::mt19937 rng(77);
  std::normal_distribution<float> d(0.0f, 3.0f);
  struct Setting {
    const char* what;
    SamplingOptions options;
  };
  std::vector<Setting> settings;
  auto add = [&](const char* what, auto&& edit) {
    SamplingOptions o;
    edit(o);
    settings.push_back({what, o});
  };
  add("temperature 1", [](SamplingOptions&) {});
  add("temperature 0.5", [](SamplingOptions& o) { o.temperature = 0.5f; });
  add("top-k 20", [](SamplingOptions& o) { o.top_k = 20; });
  add("top-k 1", [](SamplingOptions& o) { o.top_k = 1; });
  add("top-p 0.9", [](SamplingOptions& o) { o.top_p = 0.9f; });
  add("top-k 50, top-p 0.8, temperature 1.3", [](SamplingOptions& o) {
    o.top_k = 50;
    o.top_p = 0.8f;
    o.temperature = 1.3f;
  });
  add("min-p 0.05", [](SamplingOptions& o) { o.min_p = 0.05f; });
  add("top-p 0.95, min-p 0.1", [](SamplingOptions& o) {
    o.top_p = 0.95f;
    o.min_p = 0.1f;
  });
  add("penalties and bias", [](SamplingOptions& o) {
    o.repetition_penalty = 1.3f;
    o.presence_penalty = 0.5f;
    o.frequency_penalty = 0.7f;
    o.logit_bias = {{3, 5.0f}, {4, -100.0f}};
  });
  add("greedy with penalties, bias and a min_tokens ban", [](SamplingOptions& o) {
    o.temperature = 0.0f;
    o.repetition_penalty = 1.5f;
    o.frequency_penalty = 1.0f;
    o.logit_bias = {{7, 9.0f}};
    o.min_tokens = 10;
    o.banned_before_min_tokens = {0, 1, 2};
  });
  for (const int64_t vocab : {int64_t{1000}, int64_t{49152}, int64_t{128256}}) {
    constexpr int kDraws = 40;
    std::vector<float> logits;
    std::vector<tessera::kernels::cuda::SamplingRowParams> rows;
    std::vector<tessera::kernels::cuda::LogitEdit> edits;
    std::vector<int32_t> want;
    std::vector<size_t> setting_of;
    for (size_t si = 0; si < settings.size(); ++si) {
      for (int draw = 0; draw < kDraws; ++draw) {
        SamplingOptions o = settings[si].options;
        o.seed = 1000 * si + static_cast<uint64_t>(draw);
        std::vector<float> row(vocab);
        for (float& x : row) x = to_float(to_bf16(d(rng)));  // as the device reads them
        const std::vector<int32_t> prompt = {3, 5, 8, 13, 21};
        const std::vector<int32_t> output = {5, 5, 34, static_cast<int32_t>(draw % 7)};
        SequenceSampler cpu(o, static_cast<uint32_t>(vocab), prompt, output);
        SequenceSampler dev(o, static_cast<uint32_t>(vocab), prompt, output);
        rows.push_back(dev.device_row(edits));
        std::vector<float> scratch = row;
        auto r = cpu.sample(scratch);
        REQUIRE(r.is_ok());
        want.push_back(r->token_id);
        logits.insert(logits.end(), row.begin(), row.end());
        setting_of.push_back(si);
      }
    }
    const int64_t n = static_cast<int64_t>(rows.size());
    std::vector<Bf16> bits(logits.size());
    for (size_t i = 0; i < bits.size(); ++i) bits[i] = to_bf16(logits[i]);
    DeviceBuffer<Bf16> d_logits(bits);
    DeviceBuffer<tessera::kernels::cuda::SamplingRowParams> d_rows(rows);
    DeviceBuffer<tessera::kernels::cuda::LogitEdit> d_edits(edits);
    DeviceBuffer<float> d_work(n * vocab);
    DeviceBuffer<int32_t> d_out(n);
    d_out.poison();
    tessera::kernels::cuda::SampleParams p;
    p.logits = d_logits.ptr;
    p.stride = vocab;
    p.row_params = d_rows.ptr;
    p.edits = d_edits.ptr;
    p.workspace = d_work.ptr;
    p.out = d_out.ptr;
    p.rows = n;
    p.vocab = vocab;
    REQUIRE(sample(p, nullptr).is_ok());
    const auto got = d_out.download();
    std::vector<int> differ(settings.size(), 0);
    for (int64_t i = 0; i < n; ++i) {
      INFO("vocab " << vocab << ", " << settings[setting_of[i]].what << ", row " << i);
      REQUIRE(got[i] >= 0);
      REQUIRE(got[i] < vocab);
      if (got[i] != want[i]) ++differ[setting_of[i]];
    }
    for (size_t si = 0; si < settings.size(); ++si) {
      INFO("vocab " << vocab << ", " << settings[si].what << ": " << differ[si] << " of " << kDraws << " draws differ");
      if (settings[si].options.temperature == 0.0f) {
        CHECK(differ[si] == 0);
      } else {
        CHECK(differ[si] <= kDraws / 100 + 1);
      }
    }
  }
}
