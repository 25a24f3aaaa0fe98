// Sampling on the GPU. Today: the greedy fast path (argmax of fp32 logits); temperature,
// top-k/top-p/min-p and penalties on the device come next (issue 7). Plain C++ header.
#pragma once

#include "kernels/cuda/sampling_params.h"
#include "tessera/common/status.h"

namespace tessera::kernels::cuda {

// Parameters: sampling_params.h. INVALID_ARGUMENT for bad shapes; never synchronizes.
[[nodiscard]] Status argmax(const ArgmaxParams& p, Stream stream);

}  // namespace tessera::kernels::cuda
