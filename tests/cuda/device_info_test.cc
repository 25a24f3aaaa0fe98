#include "cuda_test_main.h"
#include "launch_probe.h"

TEST_CASE("visible CUDA devices report sane properties", "[cuda]") {
  const auto q = tessera::kernels::cuda::query_devices();
  REQUIRE(q.cuda_error == 0);
  REQUIRE_FALSE(q.devices.empty());
  CHECK(q.runtime_version >= 12000);
  for (const auto& d : q.devices) {
    INFO("device " << d.ordinal << " " << d.name);
    CHECK_FALSE(d.name.empty());
    CHECK(d.compute_capability_major >= 7);
    CHECK(d.num_sms > 0);
    CHECK(d.total_memory_bytes > (1ull << 30));
    CHECK(d.free_memory_bytes <= d.total_memory_bytes);
  }
}

TEST_CASE("device code built for this build's architectures runs on the GPU", "[cuda]") {
  std::vector<int> out;
  const int n = 40009;  // i*i fits in int; not a multiple of the block size: the tail guard is exercised
  REQUIRE(run_launch_probe(n, out).empty());
  for (int i = 0; i < n; ++i) {
    if (out[i] != i * i) FAIL("element " << i << " is " << out[i]);
  }
}
