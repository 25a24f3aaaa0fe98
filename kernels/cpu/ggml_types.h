// GGML tensor element types as GGUF files number them, and the size of their blocks.
//
// A quantized row is a sequence of fixed-size blocks; each block holds `block_size`
// elements in `block_bytes` bytes. The ids are part of the GGUF file format (ggml's
// `enum ggml_type`), so they never change; gaps (4, 5, 31..33, ...) are types ggml removed.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace tessera::kernels::cpu {

enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kIQ2_XXS = 16,
  kIQ2_XS = 17,
  kIQ3_XXS = 18,
  kIQ1_S = 19,
  kIQ4_NL = 20,
  kIQ3_S = 21,
  kIQ2_S = 22,
  kIQ4_XS = 23,
  kI8 = 24,
  kI16 = 25,
  kI32 = 26,
  kI64 = 27,
  kF64 = 28,
  kIQ1_M = 29,
  kBF16 = 30,
  kTQ1_0 = 34,
  kTQ2_0 = 35,
};

// Elements per super-block of the K-quants (ggml's QK_K).
inline constexpr int64_t kQkK = 256;

struct GgmlTypeTraits {
  std::string_view name;  // as ggml spells it: "Q4_K", "BF16", ...
  int64_t block_size = 0;   // elements per block
  int64_t block_bytes = 0;  // bytes per block
  bool can_dequantize = false;  // kernels/cpu/dequantize.h has a kernel for it
};

// Traits of a type id read from a file; nullopt for ids this build does not know, so a
// file with a newer type fails with a clear error instead of a wrong size.
constexpr std::optional<GgmlTypeTraits> ggml_type_traits(uint32_t id) {
  // Sizes follow the block structs in ggml-common.h (and gguf-py's GGML_QUANT_SIZES).
  switch (static_cast<GgmlType>(id)) {
    case GgmlType::kF32: return GgmlTypeTraits{"F32", 1, 4, true};
    case GgmlType::kF16: return GgmlTypeTraits{"F16", 1, 2, true};
    case GgmlType::kQ4_0: return GgmlTypeTraits{"Q4_0", 32, 18, true};
    case GgmlType::kQ4_1: return GgmlTypeTraits{"Q4_1", 32, 20, true};
    case GgmlType::kQ5_0: return GgmlTypeTraits{"Q5_0", 32, 22, true};
    case GgmlType::kQ5_1: return GgmlTypeTraits{"Q5_1", 32, 24, true};
    case GgmlType::kQ8_0: return GgmlTypeTraits{"Q8_0", 32, 34, true};
    case GgmlType::kQ8_1:
      // An activation format that files never hold, whose block layout changed across ggml
      // versions (36 or 40 bytes): refusing it beats guessing.
      return std::nullopt;
    case GgmlType::kQ2_K: return GgmlTypeTraits{"Q2_K", kQkK, 84, false};
    case GgmlType::kQ3_K: return GgmlTypeTraits{"Q3_K", kQkK, 110, false};
    case GgmlType::kQ4_K: return GgmlTypeTraits{"Q4_K", kQkK, 144, true};
    case GgmlType::kQ5_K: return GgmlTypeTraits{"Q5_K", kQkK, 176, true};
    case GgmlType::kQ6_K: return GgmlTypeTraits{"Q6_K", kQkK, 210, true};
    case GgmlType::kQ8_K: return GgmlTypeTraits{"Q8_K", kQkK, 292, true};
    case GgmlType::kIQ2_XXS: return GgmlTypeTraits{"IQ2_XXS", kQkK, 66, false};
    case GgmlType::kIQ2_XS: return GgmlTypeTraits{"IQ2_XS", kQkK, 74, false};
    case GgmlType::kIQ3_XXS: return GgmlTypeTraits{"IQ3_XXS", kQkK, 98, false};
    case GgmlType::kIQ1_S: return GgmlTypeTraits{"IQ1_S", kQkK, 50, false};
    case GgmlType::kIQ4_NL: return GgmlTypeTraits{"IQ4_NL", 32, 18, false};
    case GgmlType::kIQ3_S: return GgmlTypeTraits{"IQ3_S", kQkK, 110, false};
    case GgmlType::kIQ2_S: return GgmlTypeTraits{"IQ2_S", kQkK, 82, false};
    case GgmlType::kIQ4_XS: return GgmlTypeTraits{"IQ4_XS", kQkK, 136, false};
    case GgmlType::kI8: return GgmlTypeTraits{"I8", 1, 1, false};
    case GgmlType::kI16: return GgmlTypeTraits{"I16", 1, 2, false};
    case GgmlType::kI32: return GgmlTypeTraits{"I32", 1, 4, false};
    case GgmlType::kI64: return GgmlTypeTraits{"I64", 1, 8, false};
    case GgmlType::kF64: return GgmlTypeTraits{"F64", 1, 8, false};
    case GgmlType::kIQ1_M: return GgmlTypeTraits{"IQ1_M", kQkK, 56, false};
    case GgmlType::kBF16: return GgmlTypeTraits{"BF16", 1, 2, true};
    case GgmlType::kTQ1_0: return GgmlTypeTraits{"TQ1_0", kQkK, 54, false};
    case GgmlType::kTQ2_0: return GgmlTypeTraits{"TQ2_0", kQkK, 66, false};
  }
  return std::nullopt;
}

constexpr std::optional<GgmlTypeTraits> ggml_type_traits(GgmlType type) {
  return ggml_type_traits(static_cast<uint32_t>(type));
}

// "Q4_K", or "unknown" for an id ggml_type_traits() does not know.
constexpr std::string_view ggml_type_name(GgmlType type) {
  auto traits = ggml_type_traits(type);
  return traits ? traits->name : std::string_view("unknown");
}

// Bytes of a row of `num_elements` elements; nullopt when the type is unknown, the count
// is negative or not a whole number of blocks, or the size would overflow int64.
constexpr std::optional<int64_t> row_size_bytes(GgmlType type, int64_t num_elements) {
  auto traits = ggml_type_traits(type);
  if (!traits || num_elements < 0 || num_elements % traits->block_size != 0) return std::nullopt;
  const int64_t num_blocks = num_elements / traits->block_size;
  if (num_blocks > INT64_MAX / traits->block_bytes) return std::nullopt;
  return num_blocks * traits->block_bytes;
}

}  // namespace tessera::kernels::cpu
