// Sampling on the GPU: the greedy fast path (argmax of fp32 or bf16 logits), and full
// sampling of bf16 logits rows (logit edits for bias and penalties, temperature, top-k,
// top-p, min-p, the seeded draw) with the CPU sampler's semantics. Plain C++ header.
#pragma once

#include "kernels/cuda/sampling_params.h"
#include "tessera/common/status.h"

namespace tessera::kernels::cuda {

// Parameters: sampling_params.h. INVALID_ARGUMENT for bad shapes; never synchronizes.
[[nodiscard]] Status argmax(const ArgmaxParams& p, Stream stream);
// One block per row. Top-k, the nucleus and the draw are cuts of the CPU sampler's order
// (descending weight, ties by lower id), each found by a radix select over 64-bit keys
// (weight bits, then inverted id) with block-wide histograms, never by sorting.
[[nodiscard]] Status sample(const SampleParams& p, Stream stream);

}  // namespace tessera::kernels::cuda
