// Programmatic dependent launch (Hopper): a kernel launched with launch_pdl may be
// scheduled while the kernel before it in the stream is still finishing, so its launch and
// block setup overlap that kernel's tail instead of following it (a decode step is ~300
// short kernels back to back, where those gaps add up). Correctness rests on every such
// kernel calling pdl_wait() before its first global memory access: it returns once the
// previous grid has completed and its writes are visible. A kernel launched the ordinary
// way, or with nothing in flight before it, passes pdl_wait() at once.
#pragma once

#include <cuda_runtime.h>

namespace tessera::kernels::cuda {

// Waits for the previous grid; then lets the next kernel of the stream start launching.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;\n" :::);
#endif
}

template <typename... Params, typename... Args>
cudaError_t launch_pdl(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t stream,
                       Args&&... args) {
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = shared_bytes;
  config.stream = stream;
  config.attrs = &attribute;
  config.numAttrs = 1;
  return cudaLaunchKernelEx(&config, kernel, static_cast<Args&&>(args)...);
}

}  // namespace tessera::kernels::cuda
