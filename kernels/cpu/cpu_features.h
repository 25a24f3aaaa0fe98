// What the CPU can execute, detected once at run time, so kernels built for several
// instruction sets pick the widest one this machine supports (runtime dispatch).
#pragma once

#include <string>

namespace tessera::kernels::cpu {

struct CpuFeatures {
  bool avx2 = false;
  bool fma = false;
  bool f16c = false;
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512vl = false;
  bool avx512_vnni = false;
  bool avx512_bf16 = false;
  bool amx_bf16 = false;
  // Logical CPUs this process may run on (its affinity mask, not the machine's total).
  int num_logical_cpus = 1;
};

enum class SimdLevel { kScalar, kAvx2, kAvx512 };

// Detected on first call; cheap afterwards. Any thread may call it.
const CpuFeatures& cpu_features();

// The widest kernel family this CPU runs: AVX-512 needs F+BW+VL, AVX2 needs AVX2+FMA+F16C.
SimdLevel best_simd_level(const CpuFeatures& features);
const char* simd_level_name(SimdLevel level);

// "avx2 fma f16c avx512f ..." for logs and the worker's device description.
std::string describe(const CpuFeatures& features);

}  // namespace tessera::kernels::cpu
