// A kernel compiled with the build's CUDA architectures, launched to prove the binary's
// device code loads and runs on the visible GPU (a wrong -arch fails here, not later).
#include <cuda_runtime.h>

#include "launch_probe.h"

namespace {

__global__ void iota_squared(int* out, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = i * i;
}

}  // namespace

std::string run_launch_probe(int n, std::vector<int>& out) {
  int* d = nullptr;
  cudaError_t err = cudaMalloc(&d, sizeof(int) * n);
  if (err != cudaSuccess) return cudaGetErrorString(err);
  cudaMemset(d, 0xff, sizeof(int) * n);  // poison: a kernel that never ran leaves -1s
  iota_squared<<<(n + 255) / 256, 256>>>(d, n);
  err = cudaGetLastError();
  if (err == cudaSuccess) err = cudaDeviceSynchronize();
  out.assign(n, 0);
  if (err == cudaSuccess) err = cudaMemcpy(out.data(), d, sizeof(int) * n, cudaMemcpyDeviceToHost);
  cudaFree(d);
  return err == cudaSuccess ? "" : cudaGetErrorString(err);
}
