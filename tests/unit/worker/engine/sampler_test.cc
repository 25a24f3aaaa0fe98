#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <functional>
#include <limits>
#include <numbers>
#include <span>
#include <string>
#include <vector>

#include "worker/engine/sampler.h"

namespace engine = tessera::engine;
using engine::SampleResult;
using engine::SamplingOptions;
using engine::SequenceSampler;
using tessera::StatusCode;

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// Test data from the sampler's own counter-based stream (not std:: distributions), so
// rows are the same on every standard library.
double uniform(uint64_t stream, uint64_t i) { return engine::sampling_uniform(stream ^ 0x7e57ULL, i); }
std::vector<float> random_row(uint32_t vocab, uint64_t stream, float scale) {
  std::vector<float> row(vocab);
  for (uint32_t i = 0; i < vocab; ++i) {
    // Box-Muller: normal logits, roughly what an LM head produces.
    const double u1 = 1.0 - uniform(stream, 2 * i), u2 = uniform(stream, 2 * i + 1);
    row[i] = static_cast<float>(scale * std::sqrt(-2.0 * std::log(u1)) * std::cos(2 * std::numbers::pi * u2));
  }
  return row;
}

// Samples from a copy of `row` (sample() treats its argument as scratch).
SampleResult sample_copy(SequenceSampler& sampler, const std::vector<float>& row) {
  std::vector<float> scratch = row;
  auto r = sampler.sample(scratch);
  REQUIRE(r.is_ok());
  return *r;
}

int32_t sample_token(SequenceSampler& sampler, const std::vector<float>& row) { return sample_copy(sampler, row).token_id; }

SamplingOptions greedy() {
  SamplingOptions o;
  o.temperature = 0;
  return o;
}

uint32_t vocab_of(const std::vector<float>& row) { return static_cast<uint32_t>(row.size()); }

// Token frequencies over `n` draws of one sequence from the same row.
std::vector<double> frequencies(const SamplingOptions& options, const std::vector<float>& row, int n) {
  SequenceSampler sampler(options, vocab_of(row), {});
  std::vector<int> count(row.size(), 0);
  for (int i = 0; i < n; ++i) ++count[static_cast<std::size_t>(sample_token(sampler, row))];
  std::vector<double> freq(row.size());
  for (std::size_t i = 0; i < row.size(); ++i) freq[i] = static_cast<double>(count[i]) / n;  // exactly 1.0 when always chosen
  return freq;
}

std::vector<double> softmax(const std::vector<float>& row, double temperature = 1.0) {
  double max = *std::max_element(row.begin(), row.end());
  std::vector<double> p(row.size());
  double sum = 0;
  for (std::size_t i = 0; i < row.size(); ++i) sum += p[i] = std::exp((row[i] - max) / temperature);
  for (double& x : p) x /= sum;
  return p;
}

// Pearson's chi-square of `n` draws against expected probabilities.
double chi_square(const std::vector<double>& observed_freq, const std::vector<double>& expected_p, int n) {
  double chi2 = 0;
  for (std::size_t i = 0; i < expected_p.size(); ++i) {
    const double expected = expected_p[i] * n, observed = observed_freq[i] * n;
    if (expected == 0) {
      REQUIRE(observed == 0);
      continue;
    }
    chi2 += (observed - expected) * (observed - expected) / expected;
  }
  return chi2;
}

// The sampler's definition written the slow, obvious way: full sorts, no thresholds.
// Used to check the fast paths token for token. kept_tokens() is the kept set in draw
// order with weights; pick() is the inverse CDF at u.
struct Weighted {
  int32_t id;
  float value;
};
std::vector<Weighted> kept_tokens(const std::vector<float>& row, const SamplingOptions& o) {
  auto by_value = [](const Weighted& a, const Weighted& b) { return a.value > b.value || (a.value == b.value && a.id < b.id); };
  std::vector<Weighted> kept;
  for (std::size_t i = 0; i < row.size(); ++i) {
    if (row[i] > -kInf) kept.push_back({static_cast<int32_t>(i), row[i]});
  }
  std::sort(kept.begin(), kept.end(), by_value);
  if (o.top_k > 0 && static_cast<std::size_t>(o.top_k) < kept.size()) kept.resize(static_cast<std::size_t>(o.top_k));
  const float max = kept.front().value;
  for (Weighted& t : kept) t.value = std::exp((t.value - max) * (1.0f / o.temperature));
  std::sort(kept.begin(), kept.end(), by_value);
  double total = 0;
  for (const Weighted& t : kept) total += t.value;
  if (o.top_p < 1.0f) {
    double cumulative = 0;
    std::size_t n = 0;
    while (n < kept.size()) {
      cumulative += kept[n++].value;
      if (cumulative >= double{o.top_p} * total) break;
    }
    kept.resize(n);
  }
  while (kept.size() > 1 && kept.back().value < o.min_p) kept.pop_back();
  return kept;
}
int32_t pick(const std::vector<Weighted>& kept, double u) {
  double mass = 0;
  for (const Weighted& t : kept) mass += t.value;
  double cumulative = 0;
  for (const Weighted& t : kept) {
    cumulative += t.value;
    if (cumulative >= u * mass) return t.id;
  }
  return kept.back().id;
}

}  // namespace

TEST_CASE("greedy picks the argmax, the lowest id among ties", "[sampler][greedy]") {
  SequenceSampler sampler(greedy(), 6, {});
  CHECK(sample_token(sampler, {0.1f, 2.0f, -1.0f, 1.9f, 0.0f, -5.0f}) == 1);
  CHECK(sample_token(sampler, {0.1f, 2.0f, -1.0f, 2.0f, 2.0f, -5.0f}) == 1);
  CHECK(sample_token(sampler, {-3.0f, -3.0f, -3.0f, -3.0f, -3.0f, -3.0f}) == 0);
  CHECK(sampler.num_output_tokens() == 3);
}

TEST_CASE("greedy and top logprobs on a long row match a plain scan, ties and NaN included", "[sampler][greedy][logprobs]") {
  // Long enough for the blocked scans; coarse values so that the maximum repeats across blocks.
  auto row = random_row(5000, 21, 2.0f);
  for (float& x : row) x = std::round(x);
  for (std::size_t i = 7; i < row.size(); i += 97) row[i] = kNaN;
  for (std::size_t i : {1000, 3000, 4990}) row[i] = 20.0f;  // the maximum, in three blocks
  const int32_t first_max = 1000;

  SamplingOptions o = greedy();
  o.logprobs = true;
  o.num_top_logprobs = 20;
  SequenceSampler sampler(o, vocab_of(row), {});
  const SampleResult r = sample_copy(sampler, row);
  CHECK(r.token_id == first_max);

  std::vector<int32_t> by_logit;
  for (std::size_t i = 0; i < row.size(); ++i) {
    if (!std::isnan(row[i])) by_logit.push_back(static_cast<int32_t>(i));
  }
  std::stable_sort(by_logit.begin(), by_logit.end(), [&](int32_t a, int32_t b) { return row[static_cast<std::size_t>(a)] > row[static_cast<std::size_t>(b)]; });
  REQUIRE(r.top.size() == 20);
  for (std::size_t k = 0; k < 20; ++k) CHECK(r.top[k].token_id == by_logit[k]);
}

TEST_CASE("NaN logits count as -inf and an all-NaN/-inf row is INTERNAL without consuming a token", "[sampler][nan]") {
  for (float temperature : {0.0f, 1.0f}) {
    for (int32_t top_k : {0, 2}) {
      for (bool logprobs : {false, true}) {
        CAPTURE(temperature, top_k, logprobs);
        SamplingOptions o;
        o.temperature = temperature;
        o.top_k = top_k;
        o.logprobs = logprobs;
        SequenceSampler sampler(o, 4, {});
        for (int i = 0; i < 20; ++i) CHECK(sample_token(sampler, {kNaN, -kInf, 0.5f, kNaN}) == 2);
        std::vector<float> garbage{kNaN, -kInf, kNaN, -kInf};
        auto r = sampler.sample(garbage);
        REQUIRE_FALSE(r.is_ok());
        CHECK(r.status().code() == StatusCode::kInternal);
        CHECK(sampler.num_output_tokens() == 20);
      }
    }
  }
}

TEST_CASE("a row of the wrong size is INTERNAL", "[sampler][nan]") {
  SequenceSampler sampler(SamplingOptions{}, 4, {});
  std::vector<float> short_row{1.0f, 2.0f, 3.0f};
  auto r = sampler.sample(short_row);
  REQUIRE_FALSE(r.is_ok());
  CHECK(r.status().code() == StatusCode::kInternal);
  CHECK(sampler.num_output_tokens() == 0);
}

TEST_CASE("a +inf logit wins without turning probabilities into NaN", "[sampler][nan]") {
  SamplingOptions o;
  o.logprobs = true;
  SequenceSampler sampler(o, 4, {});
  for (int i = 0; i < 20; ++i) CHECK(sample_token(sampler, {1.0f, kInf, 3.0f, kNaN}) == 1);
}

TEST_CASE("as temperature goes to 0 sampling becomes the argmax", "[sampler][temperature]") {
  // The runner-up trails by 0.01: at temperature 1e-3 that is 10 nats (probability ~e^-10),
  // below 1e-5 sampling is greedy by definition.
  const std::vector<float> row{1.0f, 3.0f, 2.99f, -1.0f};
  for (float temperature : {1e-3f, 1e-5f, 1e-6f, 1e-30f}) {
    CAPTURE(temperature);
    SamplingOptions o;
    o.temperature = temperature;
    auto freq = frequencies(o, row, 500);
    CHECK(freq[1] == 1.0);
  }
  // At 0.01 the gap is 1 nat and both near-tied tokens are in play.
  SamplingOptions warmish;
  warmish.temperature = 0.01f;
  auto freq = frequencies(warmish, row, 4000);
  CHECK(freq[1] > 0.6);
  CHECK(freq[2] > 0.2);
}

TEST_CASE("the same seed gives the same tokens whatever else is sampled in between", "[sampler][determinism]") {
  const uint32_t vocab = 300;
  SamplingOptions o;
  o.seed = 1234;
  o.top_p = 0.95f;
  auto row_at = [&](int step) { return random_row(vocab, 100 + static_cast<uint64_t>(step), 1.5f); };

  SequenceSampler alone(o, vocab, {});
  std::vector<int32_t> tokens_alone;
  for (int step = 0; step < 40; ++step) tokens_alone.push_back(sample_token(alone, row_at(step)));

  // The same sequence in a "batch" with others: another seed, and the same seed on other rows.
  SamplingOptions other = o;
  other.seed = 99;
  SequenceSampler mine(o, vocab, {}), neighbour(other, vocab, {}), twin_seed(o, vocab, {});
  std::vector<int32_t> tokens_batched;
  for (int step = 0; step < 40; ++step) {
    for (int k = 0; k < step % 3; ++k) sample_token(neighbour, random_row(vocab, 7000 + static_cast<uint64_t>(step), 2.0f));
    sample_token(twin_seed, random_row(vocab, 9000 + static_cast<uint64_t>(step), 1.0f));
    tokens_batched.push_back(sample_token(mine, row_at(step)));
  }
  CHECK(tokens_batched == tokens_alone);
}

TEST_CASE("different seeds give different tokens", "[sampler][determinism]") {
  const auto row = random_row(1000, 5, 0.5f);  // flat: many tokens are plausible
  std::vector<std::vector<int32_t>> runs;
  for (uint64_t seed : {0ULL, 1ULL, 2ULL, 0xffffffffffffffffULL}) {
    SamplingOptions o;
    o.seed = seed;
    SequenceSampler sampler(o, 1000, {});
    std::vector<int32_t> tokens;
    for (int i = 0; i < 20; ++i) tokens.push_back(sample_token(sampler, row));
    runs.push_back(tokens);
  }
  for (std::size_t a = 0; a < runs.size(); ++a) {
    for (std::size_t b = a + 1; b < runs.size(); ++b) CHECK(runs[a] != runs[b]);
  }
}

TEST_CASE("the uniform stream lies in 0 (inclusive) to 1 (exclusive) and looks uniform", "[sampler][determinism]") {
  constexpr int kBins = 10, kDraws = 100000;
  std::vector<double> freq(kBins, 0.0);
  for (uint64_t n = 0; n < kDraws; ++n) {
    const double u = engine::sampling_uniform(42, n);
    REQUIRE(u >= 0.0);
    REQUIRE(u < 1.0);
    freq[static_cast<std::size_t>(u * kBins)] += 1.0 / kDraws;
  }
  // 9 degrees of freedom; 40 is far beyond p = 1e-5 (and the seed is fixed, so no flake).
  CHECK(chi_square(freq, std::vector<double>(kBins, 1.0 / kBins), kDraws) < 40);
  CHECK(engine::sampling_uniform(42, 7) == engine::sampling_uniform(42, 7));
  CHECK(engine::sampling_uniform(42, 7) != engine::sampling_uniform(43, 7));
}

TEST_CASE("draws follow the softmax of logits / temperature", "[sampler][distribution]") {
  const std::vector<float> row{2.0f, 1.0f, 0.5f, 0.0f, -1.0f, -3.0f};
  constexpr int kDraws = 20000;
  for (float temperature : {1.0f, 0.7f, 2.0f}) {
    for (uint64_t seed : {1ULL, 2ULL, 3ULL}) {
      CAPTURE(temperature, seed);
      SamplingOptions o;
      o.temperature = temperature;
      o.seed = seed;
      // 5 degrees of freedom: chi-square 30 has p ≈ 1.5e-5. Seeds are fixed, so it can't flake.
      CHECK(chi_square(frequencies(o, row, kDraws), softmax(row, temperature), kDraws) < 30);
    }
  }
}

TEST_CASE("top-k keeps only the k most likely tokens, in softmax proportion", "[sampler][top_k]") {
  const std::vector<float> row{0.5f, 2.0f, 1.0f, 1.5f, 0.0f, 1.0f};
  SamplingOptions o;
  o.top_k = 3;  // tokens 1, 3, and 2 (1.0, lower id than 5)
  constexpr int kDraws = 20000;
  auto freq = frequencies(o, row, kDraws);
  CHECK(freq[0] == 0.0);
  CHECK(freq[4] == 0.0);
  CHECK(freq[5] == 0.0);
  auto expected = softmax({-kInf, 2.0f, 1.0f, 1.5f, -kInf, -kInf});
  CHECK(chi_square(freq, expected, kDraws) < 25);  // 2 degrees of freedom
  o.top_k = 1;
  CHECK(frequencies(o, row, 200)[1] == 1.0);
  o.top_k = 6;  // the whole vocabulary: no filtering
  auto all = frequencies(o, row, kDraws);
  CHECK(chi_square(all, softmax(row), kDraws) < 30);
}

TEST_CASE("top-p keeps the smallest prefix whose probability reaches top_p", "[sampler][top_p]") {
  // Probabilities 0.5, 0.3, 0.15, 0.05 (listed out of order to exercise the sort).
  const std::vector<float> row{std::log(0.15f), std::log(0.5f), std::log(0.05f), std::log(0.3f)};
  constexpr int kDraws = 20000;
  SamplingOptions o;
  o.top_p = 0.75f;  // 0.5 < 0.75 <= 0.8: {1, 3}
  auto freq = frequencies(o, row, kDraws);
  CHECK(freq[0] == 0.0);
  CHECK(freq[2] == 0.0);
  CHECK(chi_square(freq, {0, 0.5 / 0.8, 0, 0.3 / 0.8}, kDraws) < 25);
  o.top_p = 0.85f;  // 0.8 < 0.85 <= 0.95: {1, 3, 0}
  freq = frequencies(o, row, kDraws);
  CHECK(freq[2] == 0.0);
  CHECK(chi_square(freq, {0.15 / 0.95, 0.5 / 0.95, 0, 0.3 / 0.95}, kDraws) < 25);
  o.top_p = 0.4f;  // the top token alone already reaches it
  CHECK(frequencies(o, row, 200)[1] == 1.0);
}

TEST_CASE("min-p drops tokens below min_p times the top probability", "[sampler][min_p]") {
  const std::vector<float> row{std::log(0.5f), std::log(0.3f), std::log(0.15f), std::log(0.05f)};
  constexpr int kDraws = 20000;
  SamplingOptions o;
  o.min_p = 0.2f;  // keeps p >= 0.1: {0, 1, 2}
  auto freq = frequencies(o, row, kDraws);
  CHECK(freq[3] == 0.0);
  CHECK(chi_square(freq, {0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0}, kDraws) < 25);
  o.min_p = 0.5f;  // keeps p >= 0.25: {0, 1}
  freq = frequencies(o, row, kDraws);
  CHECK(freq[2] == 0.0);
  CHECK(freq[3] == 0.0);
  CHECK(chi_square(freq, {0.5 / 0.8, 0.3 / 0.8, 0, 0}, kDraws) < 25);
  o.min_p = 1.0f;
  CHECK(frequencies(o, row, 200)[0] == 1.0);
  // With top-k too, min-p is applied to what top-k kept.
  o.min_p = 0.5f;
  o.top_k = 3;
  freq = frequencies(o, row, kDraws);
  CHECK(freq[2] == 0.0);
  CHECK(chi_square(freq, {0.5 / 0.8, 0.3 / 0.8, 0, 0}, kDraws) < 25);
}

// The penalty tests put the penalised token on either side of a competitor, so the
// greedy choice shows the exact penalised value.
TEST_CASE("repetition penalty divides positive and multiplies negative logits of prompt and output tokens",
          "[sampler][penalty]") {
  SamplingOptions o = greedy();
  o.repetition_penalty = 2.0f;
  const std::vector<int32_t> prompt{0, 0, 0};  // repeats don't matter: seen is seen
  {
    SequenceSampler s(o, 3, prompt);
    CHECK(sample_token(s, {3.0f, 1.4f, -9.0f}) == 0);  // 3 / 2 = 1.5 > 1.4
  }
  {
    SequenceSampler s(o, 3, prompt);
    CHECK(sample_token(s, {3.0f, 1.6f, -9.0f}) == 1);  // 1.5 < 1.6
  }
  {
    SequenceSampler s(o, 3, prompt);
    CHECK(sample_token(s, {-1.0f, -2.1f, -9.0f}) == 0);  // -1 × 2 = -2 > -2.1
  }
  {
    SequenceSampler s(o, 3, prompt);
    CHECK(sample_token(s, {-1.0f, -1.9f, -9.0f}) == 1);  // -2 < -1.9
  }
  {
    SequenceSampler s(o, 3, {}, std::vector<int32_t>{0});  // an earlier output token counts too
    CHECK(sample_token(s, {3.0f, 1.6f, -9.0f}) == 1);
  }
  {
    SequenceSampler s(o, 3, {});  // an unseen token is untouched
    CHECK(sample_token(s, {3.0f, 1.6f, -9.0f}) == 0);
  }
}

TEST_CASE("presence and frequency penalties subtract presence + frequency × count for output tokens only",
          "[sampler][penalty]") {
  SamplingOptions o = greedy();
  o.presence_penalty = 0.5f;
  o.frequency_penalty = 0.25f;
  const std::vector<int32_t> output{0, 2, 0, 0};  // token 0 three times: 3 - 0.5 - 0.75 = 1.75
  {
    SequenceSampler s(o, 3, {}, output);
    CHECK(sample_token(s, {3.0f, 1.7f, -9.0f}) == 0);
  }
  {
    SequenceSampler s(o, 3, {}, output);
    CHECK(sample_token(s, {3.0f, 1.8f, -9.0f}) == 1);
  }
  {
    SequenceSampler s(o, 3, std::vector<int32_t>{0, 0, 0});  // prompt tokens don't count
    CHECK(sample_token(s, {3.0f, 2.9f, -9.0f}) == 0);
  }
  {
    // Negative penalties encourage repetition: 1 + 1 + 2 × 1 = 4 > 3.5.
    SamplingOptions enc = greedy();
    enc.presence_penalty = -1.0f;
    enc.frequency_penalty = -1.0f;
    SequenceSampler s(enc, 3, {}, std::vector<int32_t>{2, 2});
    CHECK(sample_token(s, {3.5f, 0.0f, 1.0f}) == 2);
  }
  {
    // Sampled tokens count from the next step on: a flat row cycles through the tokens.
    SequenceSampler s(o, 3, {});
    std::vector<int32_t> tokens;
    for (int i = 0; i < 6; ++i) tokens.push_back(sample_token(s, {1.0f, 1.0f, 1.0f}));
    CHECK(tokens == std::vector<int32_t>{0, 1, 2, 0, 1, 2});
  }
}

TEST_CASE("logit bias is applied before the repetition penalty", "[sampler][penalty][logit_bias]") {
  SamplingOptions o = greedy();
  o.logit_bias = {{0, 1.0f}};
  o.repetition_penalty = 2.0f;
  SequenceSampler s(o, 2, std::vector<int32_t>{0});
  // (1 + 1) / 2 = 1.0 < 1.25; penalty first would give 1 / 2 + 1 = 1.5 > 1.25.
  CHECK(sample_token(s, {1.0f, 1.25f}) == 1);
}

TEST_CASE("logit bias of +100 forces a token and -100 bans one", "[sampler][logit_bias]") {
  const auto row = random_row(500, 11, 2.0f);
  const auto argmax = static_cast<int32_t>(std::max_element(row.begin(), row.end()) - row.begin());
  const int32_t unlikely = static_cast<int32_t>(std::min_element(row.begin(), row.end()) - row.begin());
  SamplingOptions force;
  force.logit_bias = {{unlikely, 100.0f}};
  force.temperature = 1.5f;
  auto freq = frequencies(force, row, 300);
  CHECK(freq[static_cast<std::size_t>(unlikely)] == 1.0);

  SamplingOptions ban = greedy();
  ban.logit_bias = {{argmax, -100.0f}};
  SequenceSampler s(ban, 500, {});
  CHECK(sample_token(s, row) != argmax);
}

TEST_CASE("before min_tokens the barred ids (stop ids, EOS) cannot be sampled, after it they can",
          "[sampler][min_tokens]") {
  auto row = random_row(300, 5, 1.0f);
  row[7] = 50.0f;   // "EOS": by far the most likely
  row[9] = 49.0f;   // a stop id, next
  SamplingOptions o = greedy();
  o.min_tokens = 3;
  o.banned_before_min_tokens = {7, 9, 5000};  // an id outside the vocabulary is ignored
  o.logprobs = true;
  SequenceSampler s(o, 300, {});
  for (int i = 0; i < 3; ++i) {
    auto copy = row;
    auto r = s.sample(copy);
    REQUIRE(r.is_ok());
    CHECK(r->token_id != 7);
    CHECK(r->token_id != 9);
    CHECK(r->top.empty());  // logprobs stay those of the raw row (top_logprobs is 0 here)
  }
  CHECK(sample_token(s, row) == 7);
  // A sampler rebuilt after preemption with 3 earlier outputs is past min_tokens already.
  SequenceSampler resumed(o, 300, {}, std::vector<int32_t>{1, 2, 3});
  CHECK(sample_token(resumed, row) == 7);
  // Sampling (not greedy) never draws a barred id before min_tokens either.
  o.temperature = 1.0f;
  o.logprobs = false;
  SequenceSampler drawn(o, 300, {});
  for (int i = 0; i < 3; ++i) {
    const int32_t t = sample_token(drawn, row);
    CHECK((t != 7 && t != 9));
  }
}

TEST_CASE("logprobs are the log-softmax of the raw logits, with top-N most likely first, ties by id",
          "[sampler][logprobs]") {
  const std::vector<float> row{0.5f, 2.0f, -1.0f, 2.0f, 1.0f, -kInf, 1.0f, 0.0f};
  std::vector<double> log_softmax(row.size());
  {
    double sum = 0;
    for (float x : row) sum += std::exp(double{x} - 2.0);
    for (std::size_t i = 0; i < row.size(); ++i) log_softmax[i] = row[i] - 2.0 - std::log(sum);
  }
  SamplingOptions o;
  o.logprobs = true;
  o.num_top_logprobs = 5;
  // None of the processing moves the logprobs: they are of the row as passed in.
  o.temperature = 0.3f;
  o.repetition_penalty = 1.7f;
  o.presence_penalty = 1.0f;
  o.logit_bias = {{2, 5.0f}, {7, -3.0f}};
  o.top_k = 4;
  SequenceSampler sampler(o, vocab_of(row), std::vector<int32_t>{1, 4}, std::vector<int32_t>{3});
  for (int i = 0; i < 30; ++i) {
    const SampleResult r = sample_copy(sampler, row);
    CAPTURE(i, r.token_id);
    CHECK(r.logprob == Approx(log_softmax[static_cast<std::size_t>(r.token_id)]).margin(1e-5));
    REQUIRE(r.top.size() == 5);
    const std::vector<int32_t> expected_order{1, 3, 4, 6, 0};
    for (std::size_t k = 0; k < 5; ++k) {
      CHECK(r.top[k].token_id == expected_order[k]);
      CHECK(r.top[k].logprob == Approx(log_softmax[static_cast<std::size_t>(expected_order[k])]).margin(1e-5));
    }
  }
  SamplingOptions all = o;
  all.num_top_logprobs = 20;  // more than the vocabulary: every token, -inf last
  SequenceSampler everything(all, vocab_of(row), {});
  const SampleResult r = sample_copy(everything, row);
  REQUIRE(r.top.size() == row.size());
  CHECK(r.top.back().token_id == 5);
  CHECK(r.top.back().logprob == -kInf);

  SamplingOptions off;
  SequenceSampler quiet(off, vocab_of(row), {});
  CHECK(sample_copy(quiet, row).top.empty());
}

TEST_CASE("validate accepts the defaults and boundary values", "[sampler][validate]") {
  CHECK(SamplingOptions{}.validate(10).is_ok());
  SamplingOptions o;
  o.temperature = 0;
  o.top_k = -1;
  o.top_p = 1e-6f;
  o.min_p = 1;
  o.repetition_penalty = 0.01f;
  o.presence_penalty = -2;
  o.frequency_penalty = 2;
  o.logit_bias = {{0, -100.0f}, {9, 100.0f}};
  o.logprobs = true;
  o.num_top_logprobs = 20;
  CHECK(o.validate(10).is_ok());
}

TEST_CASE("validate rejects out-of-range values, naming the field", "[sampler][validate]") {
  struct Case {
    std::string field;
    std::function<void(SamplingOptions&)> break_it;
  };
  const std::vector<Case> cases{
      {"temperature", [](SamplingOptions& o) { o.temperature = -0.1f; }},
      {"temperature", [](SamplingOptions& o) { o.temperature = kNaN; }},
      {"temperature", [](SamplingOptions& o) { o.temperature = kInf; }},
      {"top_p", [](SamplingOptions& o) { o.top_p = 0; }},
      {"top_p", [](SamplingOptions& o) { o.top_p = 1.01f; }},
      {"top_p", [](SamplingOptions& o) { o.top_p = kNaN; }},
      {"min_p", [](SamplingOptions& o) { o.min_p = -0.01f; }},
      {"min_p", [](SamplingOptions& o) { o.min_p = 1.5f; }},
      {"repetition_penalty", [](SamplingOptions& o) { o.repetition_penalty = 0; }},
      {"repetition_penalty", [](SamplingOptions& o) { o.repetition_penalty = kInf; }},
      {"presence_penalty", [](SamplingOptions& o) { o.presence_penalty = 2.5f; }},
      {"presence_penalty", [](SamplingOptions& o) { o.presence_penalty = kNaN; }},
      {"frequency_penalty", [](SamplingOptions& o) { o.frequency_penalty = -2.01f; }},
      {"logit_bias", [](SamplingOptions& o) { o.logit_bias = {{3, 100.5f}}; }},
      {"logit_bias", [](SamplingOptions& o) { o.logit_bias = {{10, 1.0f}}; }},
      {"logit_bias", [](SamplingOptions& o) { o.logit_bias = {{-1, 1.0f}}; }},
      {"logit_bias", [](SamplingOptions& o) { o.logit_bias = {{2, 1.0f}, {5, 0.0f}, {2, -1.0f}}; }},
      {"num_top_logprobs", [](SamplingOptions& o) { o.logprobs = true, o.num_top_logprobs = 21; }},
      {"num_top_logprobs", [](SamplingOptions& o) { o.num_top_logprobs = 3; }},  // without logprobs
  };
  for (const Case& c : cases) {
    SamplingOptions o;
    c.break_it(o);
    const tessera::Status status = o.validate(10);
    CAPTURE(c.field, status.to_string());
    CHECK(status.code() == StatusCode::kInvalidArgument);
    CHECK(status.message().find(c.field) != std::string::npos);
  }
  CHECK(SamplingOptions{}.validate(0).code() == StatusCode::kInvalidArgument);
}

TEST_CASE("a sampler rebuilt with the earlier output continues the same stream", "[sampler][recompute]") {
  const uint32_t vocab = 200;
  SamplingOptions o;
  o.seed = 77;
  o.temperature = 0.8f;
  o.top_k = 50;
  o.repetition_penalty = 1.3f;
  o.frequency_penalty = 0.4f;
  const std::vector<int32_t> prompt{5, 6, 7, 5};
  auto row_at = [&](int step) { return random_row(vocab, 500 + static_cast<uint64_t>(step), 1.0f); };

  SequenceSampler uninterrupted(o, vocab, prompt);
  std::vector<int32_t> tokens;
  for (int step = 0; step < 30; ++step) tokens.push_back(sample_token(uninterrupted, row_at(step)));

  for (int preempted_at : {1, 12, 29}) {
    CAPTURE(preempted_at);
    const std::vector<int32_t> before(tokens.begin(), tokens.begin() + preempted_at);
    SequenceSampler resumed(o, vocab, prompt, before);
    CHECK(resumed.num_output_tokens() == static_cast<uint32_t>(preempted_at));
    for (int step = preempted_at; step < 30; ++step) REQUIRE(sample_token(resumed, row_at(step)) == tokens[static_cast<std::size_t>(step)]);
  }
  // Without the earlier output the stream (and the penalties) start over elsewhere.
  SequenceSampler fresh(o, vocab, prompt);
  std::vector<int32_t> restarted;
  for (int step = 12; step < 30; ++step) restarted.push_back(sample_token(fresh, row_at(step)));
  CHECK(restarted != std::vector<int32_t>(tokens.begin() + 12, tokens.end()));
}

TEST_CASE("the fast paths pick the same token as a full-sort reference", "[sampler][reference]") {
  struct Setting {
    float temperature;
    int32_t top_k;
    float top_p;
    float min_p;
  };
  const std::vector<Setting> settings{
      {1.0f, 0, 1.0f, 0.0f},  {0.7f, 0, 1.0f, 0.0f},  {1.0f, 40, 1.0f, 0.0f},  {1.0f, 0, 0.9f, 0.0f},
      {1.3f, 0, 0.5f, 0.0f},  {1.0f, 0, 1.0f, 0.05f}, {1.0f, 0, 0.95f, 0.1f},  {0.5f, 100, 0.8f, 0.02f},
      {2.0f, 0, 0.99f, 0.0f}, {1.0f, 7, 1.0f, 0.3f},  {5.0f, 0, 1.0f, 0.0f},   {1.0f, 0, 0.999f, 1e-4f},
  };
  // Logits sit on a grid of 2^-8 (2^-10 for the sorted rows): distinct logits then give
  // weights at least 0.02% apart, far beyond the 1e-7 by which the sampler's exp() and
  // std::exp may differ, so both rank the tokens alike and equal logits tie exactly.
  enum class Kind { kRandom, kCoarse, kAscending, kDescending };
  struct Shape {
    uint32_t vocab;
    float scale;  // logit spread: small is flat (huge candidate sets), large is peaked
    Kind kind;    // kCoarse rounds to 0.5 so that many tie; the sorted kinds test pivots
  };
  const std::vector<Shape> shapes{{50, 1.0f, Kind::kRandom},         {1000, 0.3f, Kind::kRandom},
                                  {1000, 3.0f, Kind::kCoarse},        {20000, 0.05f, Kind::kRandom},
                                  {20000, 2.0f, Kind::kRandom},       {20000, 1.0f, Kind::kCoarse},
                                  {5000, 0x1p-10f, Kind::kAscending}, {5000, 0x1p-10f, Kind::kDescending}};
  int mismatches = 0, draws = 0;
  for (std::size_t si = 0; si < shapes.size(); ++si) {
    const Shape& shape = shapes[si];
    auto row = random_row(shape.vocab, 31 + si, shape.scale);
    for (uint32_t i = 0; i < shape.vocab; ++i) {
      row[i] = std::round(row[i] * 256) / 256;
      if (shape.kind == Kind::kCoarse) row[i] = std::round(row[i] * 2) / 2;
      if (shape.kind == Kind::kAscending) row[i] = shape.scale * static_cast<float>(i);
      if (shape.kind == Kind::kDescending) row[i] = -shape.scale * static_cast<float>(i);
    }
    for (std::size_t sti = 0; sti < settings.size(); ++sti) {
      const Setting& st = settings[sti];
      SamplingOptions o;
      o.temperature = st.temperature;
      o.top_k = st.top_k;
      o.top_p = st.top_p;
      o.min_p = st.min_p;
      o.seed = si * 1000 + sti;
      SequenceSampler sampler(o, shape.vocab, {});
      const auto kept = kept_tokens(row, o);
      for (uint32_t n = 0; n < 50; ++n) {
        const int32_t expected = pick(kept, engine::sampling_uniform(o.seed, n));
        const int32_t got = sample_token(sampler, row);
        ++draws;
        if (got != expected && ++mismatches <= 10) {
          FAIL_CHECK("vocab " << shape.vocab << " scale " << shape.scale << " T " << st.temperature << " k " << st.top_k << " p "
                              << st.top_p << " min_p " << st.min_p << " n " << n << ": got " << got << ", reference " << expected);
        }
      }
    }
  }
  CHECK(mismatches == 0);
  CHECK(draws == 4800);
}

// CPU time of this thread in µs: the machines this runs on are shared, and wall time
// would count the time other processes hold the core.
double thread_cpu_us() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e6 + static_cast<double>(ts.tv_nsec) / 1e3;
}

// Hidden by default; run with: worker_sampler_test "[.bench]"
// Two rows: "peaked" is shaped like a language model's (a head of 32 tokens, 16 nats above
// a N(0, 1.5²) bulk, top-1 probability ~0.45); "flat" is N(0, 2²) everywhere, a worst case
// whose top-p=0.9 nucleus holds ~12k tokens.
TEST_CASE("sampler microbenchmark", "[.bench]") {
  const uint32_t vocab = 49152;
  auto peaked = random_row(vocab, 3, 1.5f);
  for (uint32_t r = 0; r < 32; ++r) peaked[(r * 7919 + 11) % vocab] = 16.0f - 0.6f * static_cast<float>(r);
  const auto flat = random_row(vocab, 4, 2.0f);

  std::vector<float> row(vocab);
  constexpr int kIters = 1000;
  // A fresh sampler per sample: otherwise the penalties pile up on the few tokens the
  // peaked row keeps choosing and flatten it.
  auto time_us = [&](const std::vector<float>& pristine, const SamplingOptions& o, std::span<const int32_t> prompt) {
    std::vector<SequenceSampler> samplers(kIters, SequenceSampler(o, vocab, prompt));
    for (int i = 0; i < 20; ++i) {  // warm-up (thread-local scratch grows here)
      row = pristine;
      SequenceSampler warm(o, vocab, {});
      (void)warm.sample(row);
    }
    double total = 0;
    for (SequenceSampler& sampler : samplers) {
      row = pristine;
      const double start = thread_cpu_us();
      auto r = sampler.sample(row);
      total += thread_cpu_us() - start;
      REQUIRE(r.is_ok());
    }
    return total / kIters;
  };
  auto report = [&](const char* name, const SamplingOptions& o, std::span<const int32_t> prompt = {}) {
    std::printf("  %-30s %8.1f %8.1f\n", name, time_us(peaked, o, prompt), time_us(flat, o, prompt));
  };

  std::printf("  vocab %u, CPU us per sample()\n", vocab);
  std::printf("  %-30s %8s %8s\n", "", "peaked", "flat");
  report("greedy", greedy());
  SamplingOptions top_p;
  top_p.top_p = 0.9f;
  report("top_p=0.9", top_p);
  SamplingOptions top_k;
  top_k.top_k = 40;
  report("top_k=40", top_k);
  report("temperature=1, full vocab", SamplingOptions{});
  SamplingOptions min_p;
  min_p.min_p = 0.05f;
  report("min_p=0.05", min_p);
  SamplingOptions penalised = top_p;
  penalised.repetition_penalty = 1.1f;
  penalised.presence_penalty = 0.3f;
  penalised.frequency_penalty = 0.5f;
  std::vector<int32_t> prompt(2000);  // 2000 distinct seen tokens
  for (std::size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<int32_t>(i * 7 % vocab);
  report("top_p=0.9 + 3 penalties", penalised, prompt);
  SamplingOptions with_logprobs = top_p;
  with_logprobs.logprobs = true;
  with_logprobs.num_top_logprobs = 5;
  report("top_p=0.9 + 5 top logprobs", with_logprobs);
}
