// Asynchronous copies from global to shared memory (sm_80+): 16 bytes at a time, grouped
// and waited for by group, so that a kernel keeps the next tiles in flight while it
// computes on the one that landed.
#pragma once

#include <cuda_runtime.h>

namespace tessera::kernels::cuda {

// 16 bytes from global to shared memory without passing through registers; zeros when
// `copy` is false (the source is not read then).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool copy) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src), "r"(copy ? 16 : 0));
}
// Closes the group of the copies issued since the last commit.
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// Waits until at most kPending groups are still in flight.
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

}  // namespace tessera::kernels::cuda
