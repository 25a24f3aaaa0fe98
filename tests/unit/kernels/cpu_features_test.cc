#include <catch2/catch.hpp>

#include <algorithm>
#include <thread>

#include "kernels/cpu/cpu_features.h"

namespace cpu = tessera::kernels::cpu;

TEST_CASE("CPU feature detection agrees with the compiler's view of this CPU", "[kernels][cpu]") {
  const auto& f = cpu::cpu_features();
  CHECK(f.num_logical_cpus >= 1);
  CHECK(f.num_logical_cpus <= static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  // AVX-512 subsets imply the foundation.
  if (f.avx512bw || f.avx512vl || f.avx512_vnni || f.avx512_bf16) CHECK(f.avx512f);
  // Every x86-64 CPU with AVX-512F also has AVX2.
  if (f.avx512f) CHECK(f.avx2);
}

TEST_CASE("the dispatch level needs every feature its kernels use", "[kernels][cpu]") {
  cpu::CpuFeatures f;
  CHECK(cpu::best_simd_level(f) == cpu::SimdLevel::kScalar);
  f.avx2 = true;
  CHECK(cpu::best_simd_level(f) == cpu::SimdLevel::kScalar);  // no FMA/F16C yet
  f.fma = f.f16c = true;
  CHECK(cpu::best_simd_level(f) == cpu::SimdLevel::kAvx2);
  f.avx512f = true;
  CHECK(cpu::best_simd_level(f) == cpu::SimdLevel::kAvx2);  // BW and VL missing
  f.avx512bw = f.avx512vl = true;
  CHECK(cpu::best_simd_level(f) == cpu::SimdLevel::kAvx512);
  CHECK(cpu::describe(f) == "avx2 fma f16c avx512f avx512bw avx512vl");
  CHECK(cpu::describe(cpu::CpuFeatures{}) == "none");
}
