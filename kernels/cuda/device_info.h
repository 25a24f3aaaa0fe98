// Which CUDA devices this process sees. Plain C++ header: callers need no CUDA headers.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace tessera::kernels::cuda {

struct DeviceInfo {
  int ordinal = 0;
  std::string name;
  int compute_capability_major = 0;
  int compute_capability_minor = 0;
  int num_sms = 0;
  uint64_t total_memory_bytes = 0;
  uint64_t free_memory_bytes = 0;
};

struct DeviceQuery {
  // 0 (cudaSuccess) or the CUDA error code; "no device" is not an error: devices is empty.
  int cuda_error = 0;
  std::string error_message;
  int driver_version = 0;
  int runtime_version = 0;
  std::vector<DeviceInfo> devices;
};

// Enumerates the visible devices. Safe on machines without a GPU or driver.
DeviceQuery query_devices();

}  // namespace tessera::kernels::cuda
