// y = x · Wᵀ for the weights of a model, in the format its file stores them.
//
// Quantized weights (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K) are never
// dequantized as a whole: each row is decoded block by block into small integers and
// multiplied with activations quantized per 32 elements to int8 (as llama.cpp does), so a
// decode step reads every weight byte once. Float weights (F32, F16, BF16) use float
// activations. Kernels: scalar reference, AVX2+FMA, and AVX-512 VNNI, picked at run time.
//
// Every output element is computed the same way whatever the batch around it, so results
// are bitwise independent of batch size and composition (on one machine and path).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "kernels/cpu/ggml_types.h"
#include "tessera/common/status.h"

namespace tessera::kernels::cpu {

enum class MatmulPath {
  kAuto,    // the widest path this CPU runs
  kScalar,  // the reference kernels
  kAvx2,    // FAILED_PRECONDITION without AVX2+FMA+F16C
  kAvx512,  // FAILED_PRECONDITION without AVX-512 F/BW/VL/VNNI
};

// A weight matrix [n, k] (n output features, rows contiguous) in a GGML type.
struct MatmulWeight {
  GgmlType type = GgmlType::kF32;
  std::span<const std::byte> data;  // n * row_size_bytes(type, k) bytes
  int64_t n = 0;
  int64_t k = 0;
};

// One product sharing the call's input: y[m, n] (row stride y_stride) = x · Wᵀ + bias.
struct MatmulOutput {
  MatmulWeight weight;
  float* y = nullptr;
  int64_t y_stride = 0;       // 0: n
  const float* bias = nullptr;  // [n] or null
};

struct MatmulParams {
  const float* x = nullptr;  // [m, k]
  int64_t m = 0;
  int64_t k = 0;
  int64_t x_stride = 0;      // 0: k
  std::span<const MatmulOutput> outputs;  // all read x; computed in one parallel pass
  MatmulPath path = MatmulPath::kAuto;
};

// Whether `type` has a matmul kernel, and the divisibility k must meet for it.
bool matmul_supported(GgmlType type);
int64_t matmul_k_multiple(GgmlType type);

// Buffers reused across calls (quantized activations). One per thread that calls matmul.
class MatmulWorkspace {
 public:
  MatmulWorkspace() = default;

 private:
  friend Status matmul(const MatmulParams& params, MatmulWorkspace& workspace);
  std::vector<int8_t> q_;
  std::vector<float> d_;
  std::vector<float> s16_;
  std::vector<float> d_t_;
};

// Computes every output with the calling thread's OpenMP team. INVALID_ARGUMENT for shapes
// that disagree or a type without a kernel (nothing is written then).
[[nodiscard]] Status matmul(const MatmulParams& params, MatmulWorkspace& workspace);

// The path kAuto takes on this CPU.
MatmulPath active_matmul_path();
const char* matmul_path_name(MatmulPath path);

}  // namespace tessera::kernels::cpu
