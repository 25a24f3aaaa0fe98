// Dequantization of GGML blocks (kernels/cpu/ggml_types.h) to float32.
//
// Each type has a scalar reference kernel and, for the types models mostly ship in
// (F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K), an AVX2 kernel picked at run time from
// cpu_features(). The AVX2 kernels perform the same float operations in the same order
// as the scalar ones (no FMA contraction), so both paths give bit-identical results.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "kernels/cpu/ggml_types.h"
#include "tessera/common/status.h"

namespace tessera::kernels::cpu {

enum class DequantizePath {
  kAuto,    // the widest kernel this CPU runs, unless force_scalar_dequantize(true)
  kScalar,  // the reference kernels
  kAvx2,    // fails with FAILED_PRECONDITION on a CPU without AVX2+FMA+F16C
};

struct DequantizeParams {
  GgmlType type = GgmlType::kF32;
  std::span<const std::byte> src;  // whole blocks: row_size_bytes(type, dst.size()) bytes
  std::span<float> dst;            // [num_elements], a multiple of the type's block size
  DequantizePath path = DequantizePath::kAuto;
};

// Fills params.dst from params.src. Errors (INVALID_ARGUMENT / UNIMPLEMENTED) when the
// sizes disagree or the type has no kernel; dst is untouched then. Thread-safe.
[[nodiscard]] Status dequantize(const DequantizeParams& params);

// Makes DequantizePath::kAuto use the scalar kernels, process-wide (for tests and for
// ruling out a SIMD bug in the field). Thread-safe.
void force_scalar_dequantize(bool force);

// The path kAuto takes now: kAvx2 or kScalar.
DequantizePath active_dequantize_path();

// IEEE half / bfloat16 to float, exact for every input (half NaNs come back quiet, as
// F16C makes them; bfloat16 bits are kept as they are).
float fp16_to_fp32(uint16_t bits);
float bf16_to_fp32(uint16_t bits);
// Float to IEEE half, round to nearest even (as F16C's vcvtps2ph rounds); NaN stays NaN,
// overflow becomes infinity, tiny values become subnormals or zero.
uint16_t fp32_to_fp16(float value);

}  // namespace tessera::kernels::cpu
