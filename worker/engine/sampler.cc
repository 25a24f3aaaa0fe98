#include "worker/engine/sampler.h"

#include <algorithm>
#include <bit>
#include <cassert>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>

namespace tessera::engine {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr float kFloatMax = std::numeric_limits<float>::max();
// Below this a temperature is greedy, as in vLLM (_SAMPLING_EPS): 1/temperature would
// overflow and turn (max - max) / temperature into 0 * inf = NaN.
constexpr float kMinTemperature = 1e-5f;
constexpr uint32_t kMaxTopLogprobs = 20;
constexpr float kMaxAbsLogitBias = 100.0f;
constexpr float kMaxAbsPresenceFrequency = 2.0f;

// ---- four-lane helpers --------------------------------------------------------------
// The vocabulary-wide passes are the sampler's whole cost at 256k tokens, and the -O2
// build (no -ffast-math) does not vectorize them by itself: NaN-aware maxima and exp()
// block it. The GCC/Clang vector extension gives SSE2/NEON-width code on any target.
using F4 = float __attribute__((vector_size(16)));
using I4 = int32_t __attribute__((vector_size(16)));
using D2 = double __attribute__((vector_size(16)));
constexpr std::size_t kLanes = 4;
// Scans look at blocks of this many logits at once and only walk a block one token at a
// time when its maximum can matter.
constexpr std::size_t kBlock = 64;

F4 splat(float x) { return F4{x, x, x, x}; }
F4 load4(const float* p) {
  F4 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
void store4(float* p, F4 v) { std::memcpy(p, &v, sizeof v); }
// The last `count` (< 4) values, padded with `pad`.
F4 load_tail(const float* p, std::size_t count, float pad) {
  float lanes[kLanes] = {pad, pad, pad, pad};
  std::memcpy(lanes, p, count * sizeof(float));
  return load4(lanes);
}
// mask ? a : b, lane by lane (masks are all-ones or all-zeros per lane).
F4 select(I4 mask, F4 a, F4 b) { return std::bit_cast<F4>((std::bit_cast<I4>(a) & mask) | (std::bit_cast<I4>(b) & ~mask)); }
// Lane maximum; NaN lanes lose every comparison and so are ignored.
F4 max_ignoring_nan(F4 m, F4 x) { return select(x > m, x, m); }
float horizontal_max(F4 m) {
  float r = kNegInf;
  for (std::size_t i = 0; i < kLanes; ++i) r = m[i] > r ? m[i] : r;
  return r;
}
// Adds the four lanes of w, in double, to two two-lane sums (no wider vector type: GCC
// keeps a 32-byte one in memory on SSE2 targets).
struct Sum4 {
  D2 low = {0, 0};
  D2 high = {0, 0};
  void add(F4 w) {
    low += __builtin_convertvector(__builtin_shufflevector(w, w, 0, 1), D2);
    high += __builtin_convertvector(__builtin_shufflevector(w, w, 2, 3), D2);
  }
  double value() const { return (low[0] + low[1]) + (high[0] + high[1]); }
};
// Maximum of p[0, kBlock), NaN ignored (-inf when all are NaN).
float block_max(const float* p) {
  F4 m = splat(kNegInf);
  for (std::size_t i = 0; i < kBlock; i += kLanes) m = max_ignoring_nan(m, load4(p + i));
  return horizontal_max(m);
}

// exp(x) for x <= 0 (x may be -inf, not NaN), within 1e-7 relative of the true value;
// 0 below float's smallest normal. Cephes' expf: x = n·ln2 + r with |r| <= ln2/2,
// e^r by a degree-7 polynomial, 2^n by building the exponent bits. exp(0) is exactly 1,
// which the thresholds below rely on.
[[gnu::always_inline]] inline F4 exp4(F4 x) {
  constexpr float kMinArg = -87.33654f;   // e^kMinArg: float's smallest normal
  constexpr float kRound = 12582912.0f;   // 1.5 × 2^23: adding it rounds to an integer
  const I4 underflow = x < kMinArg;
  x = select(underflow, splat(kMinArg), x);
  const F4 n = (x * 1.44269504088896341f + kRound) - kRound;  // round(x / ln2)
  F4 r = x - n * 0.693359375f;  // ln2 split in two for an exact first step
  r = r - n * -2.12194440e-4f;
  F4 p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const F4 scale = std::bit_cast<F4>((__builtin_convertvector(n, I4) + 127) << 23);
  return std::bit_cast<F4>(std::bit_cast<I4>(p * scale) & ~underflow);
}
// The same function one value at a time, so a weight never depends on where it was computed.
float exp_scalar(float x) { return exp4(splat(x))[0]; }

// ---- the row-wide passes -----------------------------------------------------------

// A token and the value the current step orders by: a logit, or a weight
// exp((logit - max) / temperature), the probability up to a common factor.
struct Scored {
  int32_t id;
  float score;
};

// The one fixed order of top-k, top-p and the inverse-CDF draw: descending score, ties
// by lower id. Fixing it makes the drawn token a function of (row, u) alone.
// Written with '|' and '&' so that it compiles without branches: in partitions its
// outcome is a coin flip.
bool ranks_before(const Scored& a, const Scored& b) { return (a.score > b.score) | ((a.score == b.score) & (a.id < b.id)); }

// NaN counts as -inf; +inf becomes the largest float so that (x - max) stays a number
// (inf - inf would be NaN) and +inf tokens share the probability mass evenly.
float sanitize(float x) {
  if (x <= kFloatMax) return x;
  return std::isnan(x) ? kNegInf : kFloatMax;
}

// Sanitizes in place and returns the maximum (-inf when nothing is usable). Rows are
// almost always clean, so the vector pass only notes whether a second, scalar pass that
// fixes NaN and +inf is needed.
float sanitize_and_max(std::span<float> row) {
  F4 m = splat(kNegInf);
  I4 unclean = {0, 0, 0, 0};
  std::size_t i = 0;
  for (; i + kLanes <= row.size(); i += kLanes) {
    const F4 x = load4(&row[i]);
    unclean |= ~(x <= kFloatMax);
    m = max_ignoring_nan(m, x);
  }
  float max = horizontal_max(m);
  bool any_unclean = (unclean[0] | unclean[1] | unclean[2] | unclean[3]) != 0;
  for (; i < row.size(); ++i) {
    any_unclean |= !(row[i] <= kFloatMax);
    max = row[i] > max ? row[i] : max;
  }
  if (!any_unclean) return max;
  max = kNegInf;
  for (float& x : row) {
    x = sanitize(x);
    max = std::max(max, x);
  }
  return max;
}

// First index of the maximum, NaN ignored; -1 when nothing beats -inf. One pass: a block
// is walked token by token only when its maximum beats the best so far.
int32_t argmax(std::span<const float> row) {
  float best = kNegInf;
  int32_t token = -1;
  auto walk = [&](std::size_t from, std::size_t to) {
    for (std::size_t j = from; j < to; ++j) {
      if (row[j] > best) {  // '>' keeps the lowest id among equal maxima
        best = row[j];
        token = static_cast<int32_t>(j);
      }
    }
  };
  std::size_t i = 0;
  for (; i + kBlock <= row.size(); i += kBlock) {
    if (block_max(&row[i]) > best) walk(i, i + kBlock);
  }
  walk(i, row.size());
  return token;
}

// The best `n` entries of `row` by ranks_before, best first, in one pass with an n-heap.
// -inf entries are left out unless keep_neg_inf; NaN never qualifies.
void top_n(std::span<const float> row, std::size_t n, bool keep_neg_inf, std::vector<Scored>& out) {
  out.clear();
  if (n == 0) return;
  out.reserve(n);
  // With ranks_before as "less", the heap's front is the worst kept entry. Scanning ids
  // upwards, a newcomer equal to the worst has the larger id and loses the tie, hence '>'.
  float worst = kNegInf;
  auto walk = [&](std::size_t from, std::size_t to) {
    for (std::size_t i = from; i < to; ++i) {
      const float x = row[i];
      if (out.size() < n) {
        if (std::isnan(x) || (x == kNegInf && !keep_neg_inf)) continue;
        out.push_back({static_cast<int32_t>(i), x});
        std::push_heap(out.begin(), out.end(), ranks_before);
        if (out.size() == n) worst = out.front().score;
      } else if (x > worst) {
        std::pop_heap(out.begin(), out.end(), ranks_before);
        out.back() = {static_cast<int32_t>(i), x};
        std::push_heap(out.begin(), out.end(), ranks_before);
        worst = out.front().score;
      }
    }
  };
  std::size_t i = 0;
  for (; i + kBlock <= row.size(); i += kBlock) {
    if (out.size() < n || block_max(&row[i]) > worst) walk(i, i + kBlock);
  }
  walk(i, row.size());
  std::sort_heap(out.begin(), out.end(), ranks_before);
}

// Replaces each logit by its weight exp((x - max) / temperature) and returns the total
// weight and, when kWithMin, the weight of the tokens at or above min_weight. Sums run
// in double over four lanes, in a fixed order. The accumulators are plain locals (no
// lambda captures them) so they stay in registers.
struct Masses {
  double total = 0;
  double at_least_min = 0;
};
template <bool kWithMin>
Masses to_weights(std::span<float> row, float max, float inv_temperature, float min_weight) {
  Sum4 total, at_least_min;
  const std::size_t num_full = row.size() / kLanes * kLanes;
  float tail[kLanes];
  for (std::size_t i = 0; i < row.size(); i += kLanes) {
    // The last, partial group runs through a buffer padded with -inf (weight 0).
    const bool partial = i == num_full;
    float* p = partial ? tail : &row[i];
    if (partial) store4(tail, load_tail(&row[i], row.size() - i, kNegInf));
    const F4 w = exp4((load4(p) - max) * inv_temperature);
    store4(p, w);
    total.add(w);
    if constexpr (kWithMin) at_least_min.add(std::bit_cast<F4>(std::bit_cast<I4>(w) & (w >= min_weight)));
  }
  if (num_full < row.size()) std::memcpy(&row[num_full], tail, (row.size() - num_full) * sizeof(float));
  return {total.value(), at_least_min.value()};
}

// log(sum(exp(row))) of a sanitized row whose maximum is `max` (finite).
double log_sum_exp(std::span<const float> row, float max) {
  Sum4 sum;
  std::size_t i = 0;
  for (; i + kLanes <= row.size(); i += kLanes) sum.add(exp4(load4(&row[i]) - max));
  if (i < row.size()) sum.add(exp4(load_tail(&row[i], row.size() - i, kNegInf) - max));
  return double{max} + std::log(sum.value());
}

// Collects the tokens whose weight is at least `threshold` (> 0). Without branches in
// the inner loop: on flat distributions about half the tokens pass, at random.
void gather_at_least(std::span<const float> weights, float threshold, std::vector<Scored>& out) {
  std::size_t count = 0;
  auto walk = [&](std::size_t from, std::size_t to) {
    if (out.size() < count + (to - from)) out.resize(std::max(count + (to - from), 2 * out.size()));
    for (std::size_t j = from; j < to; ++j) {
      out[count] = {static_cast<int32_t>(j), weights[j]};
      count += weights[j] >= threshold;
    }
  };
  std::size_t i = 0;
  for (; i + kBlock <= weights.size(); i += kBlock) {
    if (block_max(&weights[i]) >= threshold) walk(i, i + kBlock);
  }
  walk(i, weights.size());
  out.resize(count);
}

// Four running sums so the additions don't wait on each other; the order is fixed.
double mass_of(std::span<const Scored> c) {
  double sums[4] = {0, 0, 0, 0};
  std::size_t i = 0;
  for (; i + 4 <= c.size(); i += 4) {
    for (std::size_t k = 0; k < 4; ++k) sums[k] += c[i + k].score;
  }
  for (; i < c.size(); ++i) sums[0] += c[i].score;
  return (sums[0] + sums[1]) + (sums[2] + sums[3]);
}

// Moves the entries of c ranked before `pivot` to the front and returns their count.
// Lomuto's scheme with an unconditional swap, so no branch depends on the data.
std::size_t partition_before(std::span<Scored> c, const Scored& pivot) {
  std::size_t num_before = 0;
  for (std::size_t k = 0; k < c.size(); ++k) {
    const Scored x = c[k];
    const bool before = ranks_before(x, pivot);
    c[k] = c[num_before];
    c[num_before] = x;
    num_before += before;
  }
  return num_before;
}

// Inverse CDF without sorting: finds the token where the weight accumulated in
// ranks_before order first reaches `target` (the last token when the set falls short,
// which only rounding or a min-p cut can cause) and returns its index i, having moved
// to c[0, i) exactly the tokens ranked before it, in no particular order. A quickselect
// that keeps the side holding the target mass: expected O(size). `c` is not empty.
std::size_t select_by_mass(std::span<Scored> c, double target) {
  constexpr std::size_t kSortBelow = 16;
  std::size_t lo = 0, hi = c.size();
  double mass_before = 0;  // of c[0, lo), all ranked before c[lo, hi)
  // Bad pivots (median-of-3 killers) fall back to sorting after about 2·log2(size) rounds.
  int rounds_left = 2 * std::bit_width(c.size()) + 8;
  while (hi - lo > kSortBelow && rounds_left-- > 0) {
    // Median of c[lo], c[mid], c[hi - 1] by rank, moved to hi - 1.
    const std::size_t mid = lo + (hi - lo) / 2;
    if (ranks_before(c[mid], c[lo])) std::swap(c[mid], c[lo]);
    if (ranks_before(c[hi - 1], c[lo])) std::swap(c[hi - 1], c[lo]);
    if (ranks_before(c[mid], c[hi - 1])) std::swap(c[mid], c[hi - 1]);
    const Scored pivot = c[hi - 1];
    const std::size_t m = lo + partition_before(c.subspan(lo, hi - 1 - lo), pivot);
    std::swap(c[m], c[hi - 1]);
    const double left_mass = mass_of(c.subspan(lo, m - lo));
    if (m > lo && mass_before + left_mass >= target) {
      hi = m;
    } else if (mass_before + left_mass + pivot.score >= target) {
      return m;
    } else {
      mass_before += left_mass + pivot.score;
      lo = m + 1;
    }
  }
  std::sort(c.begin() + static_cast<std::ptrdiff_t>(lo), c.begin() + static_cast<std::ptrdiff_t>(hi), ranks_before);
  for (std::size_t i = lo; i < hi; ++i) {
    mass_before += c[i].score;
    if (mass_before >= target) return i;
  }
  return hi - 1;
}

// Per-thread scratch reused across calls, so a sampler per sequence holds no vocab-sized
// buffers. Safe because sample() never re-enters itself.
struct Scratch {
  std::vector<Scored> candidates;
  std::vector<Scored> top;
  std::vector<float> raw_logits;  // the raw row, kept for the chosen token's logprob
};
Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

uint64_t splitmix64_mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

Status bad_option(const std::string& field, const std::string& rule, double got) {
  return invalid_argument("sampling options: " + field + " must be " + rule + " (got " + num(got) + ")");
}

}  // namespace

double sampling_uniform(uint64_t seed, uint64_t n) {
  // The n-th output of a SplitMix64 stream whose start is itself a hash of the seed, so
  // nearby seeds do not give shifted copies of one stream. Top 53 bits → [0, 1).
  const uint64_t state = splitmix64_mix(seed) + (n + 1) * 0x9e3779b97f4a7c15ULL;
  return static_cast<double>(splitmix64_mix(state) >> 11) * 0x1.0p-53;
}

Status SamplingOptions::validate(uint32_t vocab_size) const {
  if (vocab_size == 0 || vocab_size > static_cast<uint32_t>(std::numeric_limits<int32_t>::max())) {
    return invalid_argument("sampling options: vocab_size must be in [1, 2^31) (got " + std::to_string(vocab_size) + ")");
  }
  // Written as !(in range) so NaN fails every check.
  if (!(temperature >= 0.0f && std::isfinite(temperature))) return bad_option("temperature", "a finite number >= 0", temperature);
  if (!(top_p > 0.0f && top_p <= 1.0f)) return bad_option("top_p", "in (0, 1]", top_p);
  if (!(min_p >= 0.0f && min_p <= 1.0f)) return bad_option("min_p", "in [0, 1]", min_p);
  if (!(repetition_penalty > 0.0f && std::isfinite(repetition_penalty))) {
    return bad_option("repetition_penalty", "a finite number > 0", repetition_penalty);
  }
  if (!(std::abs(presence_penalty) <= kMaxAbsPresenceFrequency)) return bad_option("presence_penalty", "in [-2, 2]", presence_penalty);
  if (!(std::abs(frequency_penalty) <= kMaxAbsPresenceFrequency)) return bad_option("frequency_penalty", "in [-2, 2]", frequency_penalty);
  std::vector<int32_t> bias_ids;
  bias_ids.reserve(logit_bias.size());
  for (const auto& [id, bias] : logit_bias) {
    if (id < 0 || static_cast<uint32_t>(id) >= vocab_size) {
      return invalid_argument("sampling options: logit_bias token id " + std::to_string(id) + " is outside the vocabulary [0, " +
                              std::to_string(vocab_size) + ")");
    }
    if (!(std::abs(bias) <= kMaxAbsLogitBias)) return bad_option("logit_bias[" + std::to_string(id) + "]", "in [-100, 100]", bias);
    bias_ids.push_back(id);
  }
  std::sort(bias_ids.begin(), bias_ids.end());
  if (auto dup = std::adjacent_find(bias_ids.begin(), bias_ids.end()); dup != bias_ids.end()) {
    return invalid_argument("sampling options: logit_bias lists token id " + std::to_string(*dup) + " more than once");
  }
  if (num_top_logprobs > kMaxTopLogprobs) {
    return invalid_argument("sampling options: num_top_logprobs must be in [0, 20] (got " + std::to_string(num_top_logprobs) + ")");
  }
  if (num_top_logprobs > 0 && !logprobs) {
    return invalid_argument("sampling options: num_top_logprobs needs logprobs to be true");
  }
  return Status::ok();
}

SequenceSampler::SequenceSampler(SamplingOptions options, uint32_t vocab_size, std::span<const int32_t> prompt_tokens,
                                 std::span<const int32_t> output_tokens)
    : options_(std::move(options)), vocab_size_(vocab_size) {
  assert(options_.validate(vocab_size).is_ok());
  if (penalties_enabled()) {
    for (int32_t id : prompt_tokens) {
      if (id >= 0 && static_cast<uint32_t>(id) < vocab_size_) seen_[id].in_prompt = true;
    }
  }
  for (int32_t id : output_tokens) record_output(id);
}

bool SequenceSampler::penalties_enabled() const {
  return options_.repetition_penalty != 1.0f || options_.presence_penalty != 0.0f || options_.frequency_penalty != 0.0f;
}

kernels::cuda::SamplingRowParams SequenceSampler::device_row(std::vector<kernels::cuda::LogitEdit>& edits) const {
  kernels::cuda::SamplingRowParams row;
  row.temperature = options_.temperature;
  row.top_k = options_.top_k;
  row.top_p = options_.top_p;
  row.min_p = options_.min_p;
  row.repetition_penalty = options_.repetition_penalty;
  row.u = sampling_uniform(options_.seed, num_output_tokens_);
  row.edits_begin = static_cast<int32_t>(edits.size());
  std::unordered_map<int32_t, std::size_t> at;  // token -> its edit
  auto edit = [&](int32_t id) -> kernels::cuda::LogitEdit& {
    auto [it, fresh] = at.emplace(id, edits.size());
    if (fresh) edits.push_back({id});
    return edits[it->second];
  };
  for (const auto& [id, bias] : options_.logit_bias) edit(id).bias += bias;
  for (const auto& [id, seen] : seen_) {
    kernels::cuda::LogitEdit& e = edit(id);
    e.repeated = 1;
    if (seen.output_count > 0) {
      e.subtract = options_.presence_penalty + options_.frequency_penalty * static_cast<float>(seen.output_count);
    }
  }
  if (num_output_tokens_ < options_.min_tokens) {
    for (int32_t id : options_.banned_before_min_tokens) {
      if (id >= 0 && static_cast<uint32_t>(id) < vocab_size_) edit(id).banned = 1;
    }
  }
  row.edits_count = static_cast<int32_t>(edits.size()) - row.edits_begin;
  return row;
}

bool SequenceSampler::plain_greedy() const {
  return options_.temperature < kMinTemperature && options_.logit_bias.empty() && !penalties_enabled() &&
         !options_.logprobs && (num_output_tokens_ >= options_.min_tokens || options_.banned_before_min_tokens.empty());
}

void SequenceSampler::record_output(int32_t token_id) {
  ++num_output_tokens_;
  if (penalties_enabled() && token_id >= 0 && static_cast<uint32_t>(token_id) < vocab_size_) ++seen_[token_id].output_count;
}

void SequenceSampler::apply_bias_and_penalties(std::span<float> logits) const {
  for (const auto& [id, bias] : options_.logit_bias) {
    // validate() keeps ids inside the vocabulary; the check guards unvalidated options.
    if (static_cast<uint32_t>(id) < logits.size()) logits[id] = sanitize(logits[id] + bias);
  }
  if (seen_.empty()) return;
  const float rep = options_.repetition_penalty;
  for (const auto& [id, seen] : seen_) {
    float x = logits[id];
    // CTRL (Keskar et al. 2019) as HF and vLLM apply it: dividing a negative logit would
    // make the token *more* likely, so negative logits are multiplied instead.
    if (rep != 1.0f) x = x > 0 ? x / rep : x * rep;
    // OpenAI: logit -= count * frequency_penalty + (count > 0) * presence_penalty.
    if (seen.output_count > 0) {
      x -= options_.presence_penalty + options_.frequency_penalty * static_cast<float>(seen.output_count);
    }
    logits[id] = sanitize(x);
  }
}

int32_t SequenceSampler::draw(std::span<float> logits, double u) const {
  const float inv_temperature = 1.0f / options_.temperature;
  const bool top_p_enabled = options_.top_p < 1.0f;
  // min-p keeps probability >= min_p × the top one's; the top weight is exp(0) = 1.
  const float min_p = options_.min_p;
  std::vector<Scored>& c = scratch().candidates;

  if (options_.top_k > 0 && static_cast<uint32_t>(options_.top_k) < vocab_size_) {
    // Top-k first: everything after it touches only k tokens.
    top_n(logits, static_cast<std::size_t>(options_.top_k), /*keep_neg_inf=*/false, c);
    if (c.empty()) return -1;
    const float max = sanitize(c.front().score);
    for (Scored& s : c) s.score = exp_scalar((sanitize(s.score) - max) * inv_temperature);
    // A weight that underflowed to 0 can never be drawn; dropping it keeps the
    // falls-short fallback of select_by_mass from landing on it.
    std::erase_if(c, [](const Scored& s) { return s.score <= 0; });
    if (top_p_enabled) c.resize(select_by_mass(c, double{options_.top_p} * mass_of(c)) + 1);
    if (min_p > 0) std::erase_if(c, [&](const Scored& s) { return s.score < min_p; });
    return c[select_by_mass(c, u * mass_of(c))].id;
  }

  const float max = sanitize_and_max(logits);
  if (max == kNegInf) return -1;
  // From here the row holds weights; the most likely token's is exactly 1.
  // min-p's kept mass is needed only when there is no top-p to find the kept set.
  const Masses masses = min_p > 0 && !top_p_enabled ? to_weights<true>(logits, max, inv_temperature, min_p)
                                                    : to_weights<false>(logits, max, inv_temperature, min_p);
  // Both branches gather only tokens above a threshold that provably holds the answer:
  // the tokens left out number at most vocab_size and each weighs less than the
  // threshold, so together they weigh less than the mass the answer may skip. Every
  // threshold is at most 1, so the top token is always gathered.
  const double vocab = vocab_size_;
  if (top_p_enabled) {
    // Nucleus: the smallest set of most likely tokens reaching top_p × total. Leaving out
    // tokens under (1 - top_p) × total / vocab keeps more than that. min-p cuts the same
    // ranking, so the kept set is the smaller of the two: the threshold takes the larger.
    const auto threshold = static_cast<float>(std::max<double>((1.0 - options_.top_p) * masses.total / vocab, min_p));
    gather_at_least(logits, threshold, c);
    c.resize(select_by_mass(c, double{options_.top_p} * masses.total) + 1);
    return c[select_by_mass(c, u * mass_of(c))].id;
  }
  // Draw over {weight >= min_p} (everything when min_p is 0): the inverse CDF at u lies
  // among the tokens above (1 - u) × kept mass / vocab.
  const double kept_mass = min_p > 0 ? masses.at_least_min : masses.total;
  const auto threshold = static_cast<float>(std::max<double>((1.0 - u) * kept_mass / vocab, min_p));
  gather_at_least(logits, threshold, c);
  return c[select_by_mass(c, u * kept_mass)].id;
}

Result<SampleResult> SequenceSampler::sample(std::span<float> logits) {
  if (logits.size() != vocab_size_) {
    // Penalties and biases index the row by token id: a short row would be written past.
    return internal_error("sampler: logits row has " + std::to_string(logits.size()) + " entries, expected vocab_size " +
                          std::to_string(vocab_size_));
  }
  SampleResult result;
  std::vector<float>& raw = scratch().raw_logits;
  double raw_log_sum_exp = 0;
  if (options_.logprobs) {
    raw.assign(logits.begin(), logits.end());
    const float raw_max = sanitize_and_max(raw);
    if (raw_max == kNegInf) return internal_error("sampler: logits are all NaN or -inf");
    raw_log_sum_exp = log_sum_exp(raw, raw_max);
    std::vector<Scored>& top = scratch().top;
    top_n(raw, options_.num_top_logprobs, /*keep_neg_inf=*/true, top);
    result.top.reserve(top.size());
    for (const Scored& s : top) result.top.push_back({s.id, static_cast<float>(s.score - raw_log_sum_exp)});
  }

  apply_bias_and_penalties(logits);
  if (num_output_tokens_ < options_.min_tokens) {
    for (int32_t id : options_.banned_before_min_tokens) {
      if (id >= 0 && static_cast<uint32_t>(id) < vocab_size_) logits[static_cast<std::size_t>(id)] = kNegInf;
    }
  }

  const int32_t token = options_.temperature < kMinTemperature
                            ? argmax(logits)
                            : draw(logits, sampling_uniform(options_.seed, num_output_tokens_));
  if (token < 0) return internal_error("sampler: logits are all NaN or -inf");

  result.token_id = token;
  if (options_.logprobs) {
    result.has_logprobs = true;
    result.logprob = static_cast<float>(raw[static_cast<std::size_t>(token)] - raw_log_sum_exp);
  }
  record_output(token);
  return result;
}

}  // namespace tessera::engine
