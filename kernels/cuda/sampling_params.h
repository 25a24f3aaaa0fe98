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

namespace launch {
const char* argmax(const ArgmaxParams& p, Stream stream);
}  // namespace launch

}  // namespace tessera::kernels::cuda
