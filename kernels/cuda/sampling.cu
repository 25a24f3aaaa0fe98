#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "kernels/cuda/sampling_params.h"

namespace tessera::kernels::cuda {

namespace {

constexpr int kThreads = 512;

// (value, index) pairs ordered by value, then by the lower index; NaN below everything.
struct Best {
  float value;
  int32_t index;
};
__device__ __forceinline__ bool better(const Best& a, const Best& b) {
  if (a.value != a.value) return false;  // NaN never wins
  if (b.value != b.value) return true;
  return a.value > b.value || (a.value == b.value && a.index < b.index);
}

__device__ __forceinline__ float load_logit(const float* row, int64_t i) { return row[i]; }
__device__ __forceinline__ float load_logit(const __nv_bfloat16* row, int64_t i) { return __bfloat162float(row[i]); }

template <class T>
__global__ void __launch_bounds__(kThreads) argmax_kernel(ArgmaxParams p) {
  const T* row = static_cast<const T*>(p.logits) + blockIdx.x * p.stride;
  Best best{__int_as_float(0x7fc00000), -1};
  for (int64_t i = threadIdx.x; i < p.vocab; i += kThreads) {
    const Best c{load_logit(row, i), static_cast<int32_t>(i)};
    if (best.index < 0 || better(c, best)) best = c;
  }
  for (int o = 16; o > 0; o >>= 1) {
    const Best other{__shfl_xor_sync(0xffffffffu, best.value, o), __shfl_xor_sync(0xffffffffu, best.index, o)};
    if (other.index >= 0 && (best.index < 0 || better(other, best))) best = other;
  }
  __shared__ Best warps[kThreads / 32];
  if ((threadIdx.x & 31) == 0) warps[threadIdx.x >> 5] = best;
  __syncthreads();
  if (threadIdx.x == 0) {
    Best b = warps[0];
    for (int w = 1; w < kThreads / 32; ++w) {
      if (warps[w].index >= 0 && (b.index < 0 || better(warps[w], b))) b = warps[w];
    }
    const bool usable = b.index >= 0 && b.value == b.value && b.value != -__int_as_float(0x7f800000);
    p.out[blockIdx.x] = usable ? b.index : -1;
  }
}

}  // namespace

namespace launch {

const char* argmax(const ArgmaxParams& p, Stream stream) {
  if (p.bf16) {
    argmax_kernel<__nv_bfloat16><<<static_cast<unsigned>(p.rows), kThreads, 0, stream>>>(p);
  } else {
    argmax_kernel<float><<<static_cast<unsigned>(p.rows), kThreads, 0, stream>>>(p);
  }
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? nullptr : cudaGetErrorString(e);
}

}  // namespace launch

}  // namespace tessera::kernels::cuda
