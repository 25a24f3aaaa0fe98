#include <cuda_runtime.h>

#include "kernels/cuda/device_info.h"

namespace tessera::kernels::cuda {

DeviceQuery query_devices() {
  DeviceQuery q;
  cudaRuntimeGetVersion(&q.runtime_version);
  cudaDriverGetVersion(&q.driver_version);  // 0 when no driver is installed
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err == cudaErrorNoDevice || err == cudaErrorInsufficientDriver) {
    cudaGetLastError();  // clear the sticky-free error so later calls start clean
    return q;
  }
  if (err != cudaSuccess) {
    q.cuda_error = static_cast<int>(err);
    q.error_message = cudaGetErrorString(err);
    cudaGetLastError();
    return q;
  }
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop{};
    err = cudaGetDeviceProperties(&prop, i);
    if (err != cudaSuccess) {
      q.cuda_error = static_cast<int>(err);
      q.error_message = cudaGetErrorString(err);
      return q;
    }
    DeviceInfo d;
    d.ordinal = i;
    d.name = prop.name;
    d.compute_capability_major = prop.major;
    d.compute_capability_minor = prop.minor;
    d.num_sms = prop.multiProcessorCount;
    d.total_memory_bytes = prop.totalGlobalMem;
    size_t free_bytes = 0, total_bytes = 0;
    if (cudaSetDevice(i) == cudaSuccess && cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess) {
      d.free_memory_bytes = free_bytes;
    } else {
      cudaGetLastError();
    }
    q.devices.push_back(std::move(d));
  }
  return q;
}

}  // namespace tessera::kernels::cuda
