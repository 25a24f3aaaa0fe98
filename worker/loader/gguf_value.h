// One GGUF metadata value: a scalar, a string or an array (of scalars, strings or arrays).
//
// Values borrow from the GgufFile that parsed them: strings and array payloads are views
// into the file's bytes, so a GgufValue must not outlive its GgufFile.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace tessera::loader {

// Type ids as the GGUF specification numbers them.
enum class GgufValueType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

// "u8", "string", "array", ...; "unknown" for ids outside the specification.
std::string_view gguf_value_type_name(GgufValueType type);
bool is_valid_gguf_value_type(uint32_t id);
// Bytes one value of a fixed-width type takes in the file; 0 for string and array.
size_t gguf_fixed_width_bytes(GgufValueType type);
bool is_integer_type(GgufValueType type);

class GgufValue {
 public:
  GgufValueType type() const { return type_; }
  bool is_array() const { return type_ == GgufValueType::kArray; }

  // Scalar reads; nullopt when the value's type does not fit the request.
  std::optional<uint64_t> as_uint() const;  // any integer type, when the value is >= 0
  std::optional<int64_t> as_int() const;    // any integer type, when it fits int64
  std::optional<double> as_float() const;   // f32 or f64
  std::optional<bool> as_bool() const;
  std::optional<std::string_view> as_string() const;

  // Arrays (meaningful when is_array()).
  GgufValueType element_type() const { return element_type_; }
  uint64_t num_elements() const { return num_elements_; }
  // Element i of any array as a value; strings and scalars are cheap, nested arrays copy
  // their element list. Precondition: i < num_elements().
  GgufValue element(uint64_t i) const;
  std::span<const std::string_view> string_elements() const { return strings_; }
  std::span<const GgufValue> array_elements() const { return arrays_; }
  // The packed little-endian payload of a fixed-width array.
  std::span<const std::byte> raw_elements() const { return raw_; }

  // Human-readable rendering for `tessera inspect`: arrays show their first
  // max_elements elements and the total count; long strings are cut at max_string_chars.
  std::string to_display_string(size_t max_elements = 8, size_t max_string_chars = 80) const;

  // Constructors for the parser.
  static GgufValue scalar(GgufValueType type, std::span<const std::byte> bytes);
  static GgufValue string(std::string_view text);
  static GgufValue fixed_array(GgufValueType element_type, uint64_t num_elements,
                               std::span<const std::byte> raw);
  static GgufValue string_array(std::vector<std::string_view> strings);
  static GgufValue nested_array(std::vector<GgufValue> arrays);

 private:
  GgufValueType type_ = GgufValueType::kUint8;
  uint64_t bits_ = 0;  // scalar payload, zero-extended little-endian bytes
  std::string_view string_;
  GgufValueType element_type_ = GgufValueType::kUint8;
  uint64_t num_elements_ = 0;
  std::span<const std::byte> raw_;
  std::vector<std::string_view> strings_;
  std::vector<GgufValue> arrays_;
};

}  // namespace tessera::loader
