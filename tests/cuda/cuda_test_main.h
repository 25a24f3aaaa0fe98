// Main for GPU test binaries: runs Catch2 when a CUDA device is visible, otherwise exits
// with TESSERA_CUDA_SKIP_CODE so CTest reports the test as skipped.
#pragma once

#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <cstdio>

#include "kernels/cuda/device_info.h"

int main(int argc, char** argv) {
  const auto q = tessera::kernels::cuda::query_devices();
  if (q.devices.empty()) {
    std::printf("skipped: no CUDA device visible%s%s\n", q.error_message.empty() ? "" : ": ",
                q.error_message.c_str());
    return TESSERA_CUDA_SKIP_CODE;
  }
  return Catch::Session().run(argc, argv);
}
