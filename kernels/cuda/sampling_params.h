// Parameters of the on-device sampling kernels (kernels/cuda/sampling.h), apart from Status
// so that the CUDA translation unit sees them too.
#pragma once

#include <cstdint>

#include "kernels/cuda/layer_ops_params.h"

namespace tessera::kernels::cuda {

// Greedy decoding's fast path: the index of each row's largest logit (the lowest index
// among equal maxima, as the CPU sampler picks). NaN logits never win; a row without a
// usable logit (all NaN or -inf) gets -1, which the CPU sampler reports as an error too.
struct ArgmaxParams {
  const void* logits = nullptr;  // [rows, vocab], row stride `stride`: fp32, or bf16 when bf16
  int64_t stride = 0;
  int32_t* out = nullptr;  // [rows]
  int64_t rows = 0;
  int64_t vocab = 0;
  bool bf16 = false;
};

// One row's sampling, as the CPU's SequenceSampler does it (worker/engine/sampler.h):
// edits (logit_bias, penalties, bans), then greedy, or temperature → top-k → top-p →
// min-p → the inverse-CDF draw at u over the kept tokens in descending weight order.
struct SamplingRowParams {
  float temperature = 1.0f;  // below 1e-5: greedy
  int32_t top_k = 0;         // <= 0 or >= vocab: off
  float top_p = 1.0f;        // 1: off
  float min_p = 0.0f;        // 0: off
  float repetition_penalty = 1.0f;
  int32_t edits_begin = 0;   // this row's edits: edits[edits_begin, edits_begin + edits_count)
  int32_t edits_count = 0;
  double u = 0.0;            // the uniform draw in [0, 1) (sampling_uniform(seed, n))
};

// The change one token's logit gets before sampling, in the CPU sampler's order:
// x += bias; if repeated, x = x > 0 ? x / repetition_penalty : x * repetition_penalty;
// x -= subtract; if banned, x = -inf. Each token appears at most once per row.
struct LogitEdit {
  int32_t token = 0;
  float bias = 0.0f;
  float subtract = 0.0f;  // presence + frequency × times generated
  uint8_t repeated = 0;   // seen in the prompt or the output (repetition penalty applies)
  uint8_t banned = 0;     // min_tokens not reached: stop and EOS ids
};

struct SampleParams {
  const Bf16* logits = nullptr;        // [rows, vocab], row stride `stride`
  int64_t stride = 0;
  const SamplingRowParams* row_params = nullptr;  // [rows], device memory
  const LogitEdit* edits = nullptr;               // device memory
  float* workspace = nullptr;          // [rows, vocab] fp32
  int32_t* out = nullptr;              // [rows]; -1 where no logit is usable
  int64_t rows = 0;
  int64_t vocab = 0;
};

namespace launch {
const char* argmax(const ArgmaxParams& p, Stream stream);
const char* sample(const SampleParams& p, Stream stream);
}  // namespace launch

}  // namespace tessera::kernels::cuda
