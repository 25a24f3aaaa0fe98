// SequenceSampler: turns one row of logits into the next token of one sequence.
//
// Processing order:
//   logit_bias → repetition penalty → presence/frequency penalties → min_tokens ban →
//   greedy argmax (temperature == 0) or temperature → top-k → top-p → min-p → draw.
// The penalties follow HF/vLLM (repetition) and OpenAI (presence/frequency). Logprobs
// are taken from the raw row as passed in, before any of that (vLLM v1's default "raw
// logprobs").
//
// Determinism: the draw for the n-th output token of a sequence (n counts from 0 and
// includes output tokens handed to the constructor) is a counter-based hash of
// (seed, n), and the token is found by inverse CDF over the kept tokens in a fixed
// order (descending probability, ties by lower id). So a seed gives the same tokens
// whatever else shares the batch, and a sequence recomputed after preemption continues
// the same random stream.
//
// Cost: greedy is one pass over the row. Otherwise the vocabulary is never sorted: top-k
// keeps a k-heap in one pass; top-p and the draw look only at the tokens above a
// probability threshold that provably contains the answer, and find the nucleus and the
// drawn token among those by a mass-weighted quickselect (expected linear time). The
// vocabulary-wide passes run four lanes at a time. Penalties touch only the tokens seen
// so far.
#pragma once

#include <cstdint>
#include <span>
#include <unordered_map>
#include <utility>
#include <vector>

#include "kernels/cuda/sampling_params.h"
#include "tessera/common/status.h"

namespace tessera::engine {

struct SamplingOptions {
  float temperature = 1.0f;         // 0 → greedy (argmax; so is anything below 1e-5, as in vLLM)
  int32_t top_k = 0;                // <= 0 (or >= vocab): disabled
  float top_p = 1.0f;               // (0, 1]; 1: disabled
  float min_p = 0.0f;               // [0, 1], relative to the most likely token; 0: disabled
  float repetition_penalty = 1.0f;  // > 0; HF/vLLM CTRL-style over prompt+output tokens
  float presence_penalty = 0.0f;    // [-2, 2], OpenAI semantics, output tokens only
  float frequency_penalty = 0.0f;   // [-2, 2], OpenAI semantics, output tokens only
  // Added to the raw logit; [-100, 100] each, token ids inside the vocabulary, each id once.
  std::vector<std::pair<int32_t, float>> logit_bias;
  // Until min_tokens tokens are out, these ids cannot be sampled (their logits are -inf):
  // the request's stop token ids, plus the model's EOS ids (the engine adds them). Ids
  // outside the vocabulary are ignored.
  uint32_t min_tokens = 0;
  std::vector<int32_t> banned_before_min_tokens;
  uint64_t seed = 0;
  bool logprobs = false;
  uint32_t num_top_logprobs = 0;  // 0..20; needs logprobs (as OpenAI's top_logprobs does)

  // INVALID_ARGUMENT naming the offending field.
  [[nodiscard]] Status validate(uint32_t vocab_size) const;
};

struct TokenLogprob {
  int32_t token_id = 0;
  float logprob = 0;
};

struct SampleResult {
  int32_t token_id = 0;
  bool has_logprobs = false;      // options.logprobs was set: logprob and top are filled
  float logprob = 0;              // set when options.logprobs
  std::vector<TokenLogprob> top;  // num_top_logprobs entries (fewer if the vocabulary is
                                  // smaller), most likely first, ties by lower id
};

// The uniform draw in [0, 1) for the n-th output token of a sequence with this seed.
// Exposed so tests (and a future GPU sampler) can reproduce the stream exactly.
double sampling_uniform(uint64_t seed, uint64_t n);

// Per-sequence sampler state; one per sequence, used by one thread at a time.
class SequenceSampler {
 public:
  // `options` must have passed validate(vocab_size). prompt_tokens count for the
  // repetition penalty; output_tokens are tokens generated before (a sequence recomputed
  // after preemption) and count as output. Ids outside the vocabulary are ignored.
  SequenceSampler(SamplingOptions options, uint32_t vocab_size, std::span<const int32_t> prompt_tokens,
                  std::span<const int32_t> output_tokens = {});

  // Samples the next token from one row of logits [vocab_size]. The row is scratch: it
  // may be modified. Records the chosen token as output (penalties see it next time) and
  // advances the random stream.
  //
  // NaN logits count as -inf. A row with no usable logit (all NaN or -inf) means the
  // model produced garbage, and a row whose size is not vocab_size is an engine bug: both
  // are INTERNAL, and leave the sampler unchanged (no token recorded, no draw consumed)
  // so the caller can fail the sequence.
  Result<SampleResult> sample(std::span<float> logits);

  // Whether sample() would be a plain argmax of the row: greedy, no logit_bias, no
  // penalties, no logprobs and no min_tokens ban left. A device backend may then pick the
  // token itself and hand it to accept().
  bool plain_greedy() const;
  // What a device needs to sample this sequence's next token as sample() would (without
  // logprobs): the row's parameters, with the draw's u, and its logit edits (logit_bias,
  // penalties from the tokens seen so far, the min_tokens ban), appended to `edits`.
  kernels::cuda::SamplingRowParams device_row(std::vector<kernels::cuda::LogitEdit>& edits) const;
  // Records a token chosen outside sample() (by argmax when plain_greedy(), or on a device
  // from device_row()): penalties see it next time and the random stream advances.
  void accept(int32_t token_id) { record_output(token_id); }

  uint32_t num_output_tokens() const { return num_output_tokens_; }
  const SamplingOptions& options() const { return options_; }

 private:
  struct SeenToken {
    bool in_prompt = false;
    uint32_t output_count = 0;
  };

  bool penalties_enabled() const;
  void record_output(int32_t token_id);
  // logit_bias, then the penalties, in place and only on the tokens they concern.
  void apply_bias_and_penalties(std::span<float> logits) const;
  // Temperature, top-k, top-p, min-p and the inverse-CDF draw at u. Returns the token,
  // or -1 when no logit is usable.
  int32_t draw(std::span<float> logits, double u) const;

  SamplingOptions options_;
  uint32_t vocab_size_;
  uint32_t num_output_tokens_ = 0;
  // Only the tokens seen so far, so penalties cost O(distinct seen tokens), not O(vocab).
  // Empty when no penalty is enabled.
  std::unordered_map<int32_t, SeenToken> seen_;
};

}  // namespace tessera::engine
