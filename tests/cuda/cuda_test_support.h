// Shared by the CUDA kernel tests: bf16 on the host, device buffers that can be poisoned
// (filled with bf16 NaN) before a kernel runs, random inputs, and the bf16 closeness test.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include <catch2/catch.hpp>

#include "kernels/cuda/layer_ops_params.h"

namespace tessera::cuda_testing {

using kernels::cuda::Bf16;

inline Bf16 to_bf16(float f) {  // round to nearest even, as __float2bfloat16_rn
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if (std::isnan(f)) return 0x7FC0;
  u += 0x7FFF + ((u >> 16) & 1);
  return static_cast<Bf16>(u >> 16);
}
inline float to_float(Bf16 b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline double round_bf16(double v) { return to_float(to_bf16(static_cast<float>(v))); }

constexpr Bf16 kPoison = 0xFFFF;  // a bf16 NaN

template <typename T>
struct DeviceBuffer {
  T* ptr = nullptr;
  size_t count = 0;
  explicit DeviceBuffer(size_t n) : count(n) { REQUIRE(cudaMalloc(&ptr, std::max<size_t>(n, 1) * sizeof(T)) == cudaSuccess); }
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) { upload(host); }
  ~DeviceBuffer() { cudaFree(ptr); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  void upload(const std::vector<T>& host) {
    REQUIRE(cudaMemcpy(ptr, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice) == cudaSuccess);
  }
  void poison() { REQUIRE(cudaMemset(ptr, 0xFF, count * sizeof(T)) == cudaSuccess); }
  std::vector<T> download() const {
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
    std::vector<T> host(count);
    REQUIRE(cudaMemcpy(host.data(), ptr, count * sizeof(T), cudaMemcpyDeviceToHost) == cudaSuccess);
    return host;
  }
};

inline std::vector<Bf16> random_bf16(size_t n, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<Bf16> v(n);
  for (auto& x : v) x = to_bf16(d(rng));
  return v;
}

// |got - want| within `ulps` bf16 units of `magnitude` (the scale the rounding happened at).
inline bool close(Bf16 got, double want, double magnitude, double ulps = 2) {
  const double g = to_float(got);
  if (!std::isfinite(g)) return false;
  return std::abs(g - want) <= ulps * std::ldexp(std::max(magnitude, 1e-30), -7) + 1e-30;
}


}  // namespace tessera::cuda_testing
