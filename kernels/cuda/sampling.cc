#include "kernels/cuda/sampling.h"

#include <string>

namespace tessera::kernels::cuda {

Status argmax(const ArgmaxParams& p, Stream stream) {
  if (p.rows < 0 || p.vocab <= 0 || p.vocab > INT32_MAX || p.stride < p.vocab) {
    return invalid_argument("cuda argmax: bad shape");
  }
  if (p.rows == 0) return Status::ok();
  if (!p.logits || !p.out) return invalid_argument("cuda argmax: null buffer");
  if (const char* e = launch::argmax(p, stream)) return internal_error(std::string("cuda argmax: ") + e);
  return Status::ok();
}

Status sample(const SampleParams& p, Stream stream) {
  if (p.rows < 0 || p.vocab <= 0 || p.vocab > INT32_MAX || p.stride < p.vocab) {
    return invalid_argument("cuda sample: bad shape");
  }
  if (p.rows == 0) return Status::ok();
  if (!p.logits || !p.row_params || !p.workspace || !p.out) return invalid_argument("cuda sample: null buffer");
  if (const char* e = launch::sample(p, stream)) return internal_error(std::string("cuda sample: ") + e);
  return Status::ok();
}

}  // namespace tessera::kernels::cuda
