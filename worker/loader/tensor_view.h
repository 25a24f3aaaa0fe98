// A named, typed view of a tensor's bytes inside a mapped model file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace tessera::loader {

// Plain (unquantized) element types of Hugging Face checkpoints that Tessera loads.
// GGUF tensors, quantized ones included, are described by GgufTensorInfo instead.
enum class TensorDtype { kF32, kF16, kBF16, kI8, kU8 };

// "F32", "F16", "BF16", "I8", "U8" as safetensors spells them.
std::string_view tensor_dtype_name(TensorDtype dtype);
size_t tensor_dtype_bytes(TensorDtype dtype);
std::optional<TensorDtype> parse_tensor_dtype(std::string_view name);

struct TensorView {
  std::string name;
  TensorDtype dtype = TensorDtype::kF32;
  // Row-major, outermost dimension first (PyTorch order; GGUF's dims are the reverse).
  // Empty for a scalar.
  std::vector<int64_t> shape;
  std::span<const std::byte> bytes;  // borrowed from the file that owns the mapping

  int64_t num_elements() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

}  // namespace tessera::loader
