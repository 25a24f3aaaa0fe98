#include "worker/loader/gguf_value.h"

#include <algorithm>
#include <bit>
#include <cassert>
#include <cstdio>
#include <cstring>
#include <limits>
#include <utility>

namespace tessera::loader {
namespace {

// Sign-extends the low `num_bytes` bytes of bits.
int64_t sign_extend(uint64_t bits, size_t num_bytes) {
  if (num_bytes >= 8) return static_cast<int64_t>(bits);
  const unsigned shift = static_cast<unsigned>(64 - 8 * num_bytes);
  return static_cast<int64_t>(bits << shift) >> shift;
}

bool is_signed_integer(GgufValueType type) {
  return type == GgufValueType::kInt8 || type == GgufValueType::kInt16 ||
         type == GgufValueType::kInt32 || type == GgufValueType::kInt64;
}

void append_escaped(std::string* out, std::string_view text, size_t max_chars) {
  out->push_back('"');
  size_t n = 0;
  for (char c : text) {
    if (n++ == max_chars) {
      *out += "...";
      break;
    }
    switch (c) {
      case '"': *out += "\\\""; break;
      case '\\': *out += "\\\\"; break;
      case '\n': *out += "\\n"; break;
      case '\t': *out += "\\t"; break;
      case '\r': *out += "\\r"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          static const char kHex[] = "0123456789abcdef";
          *out += "\\x";
          out->push_back(kHex[(c >> 4) & 0xF]);
          out->push_back(kHex[c & 0xF]);
        } else {
          out->push_back(c);
        }
    }
  }
  out->push_back('"');
}

}  // namespace

std::string_view gguf_value_type_name(GgufValueType type) {
  switch (type) {
    case GgufValueType::kUint8: return "u8";
    case GgufValueType::kInt8: return "i8";
    case GgufValueType::kUint16: return "u16";
    case GgufValueType::kInt16: return "i16";
    case GgufValueType::kUint32: return "u32";
    case GgufValueType::kInt32: return "i32";
    case GgufValueType::kFloat32: return "f32";
    case GgufValueType::kBool: return "bool";
    case GgufValueType::kString: return "string";
    case GgufValueType::kArray: return "array";
    case GgufValueType::kUint64: return "u64";
    case GgufValueType::kInt64: return "i64";
    case GgufValueType::kFloat64: return "f64";
  }
  return "unknown";
}

bool is_valid_gguf_value_type(uint32_t id) { return id <= static_cast<uint32_t>(GgufValueType::kFloat64); }

size_t gguf_fixed_width_bytes(GgufValueType type) {
  switch (type) {
    case GgufValueType::kUint8:
    case GgufValueType::kInt8:
    case GgufValueType::kBool: return 1;
    case GgufValueType::kUint16:
    case GgufValueType::kInt16: return 2;
    case GgufValueType::kUint32:
    case GgufValueType::kInt32:
    case GgufValueType::kFloat32: return 4;
    case GgufValueType::kUint64:
    case GgufValueType::kInt64:
    case GgufValueType::kFloat64: return 8;
    case GgufValueType::kString:
    case GgufValueType::kArray: return 0;
  }
  return 0;
}

bool is_integer_type(GgufValueType type) {
  switch (type) {
    case GgufValueType::kUint8:
    case GgufValueType::kInt8:
    case GgufValueType::kUint16:
    case GgufValueType::kInt16:
    case GgufValueType::kUint32:
    case GgufValueType::kInt32:
    case GgufValueType::kUint64:
    case GgufValueType::kInt64: return true;
    default: return false;
  }
}

std::optional<uint64_t> GgufValue::as_uint() const {
  if (!is_integer_type(type_)) return std::nullopt;
  if (is_signed_integer(type_)) {
    const int64_t v = sign_extend(bits_, gguf_fixed_width_bytes(type_));
    if (v < 0) return std::nullopt;
    return static_cast<uint64_t>(v);
  }
  return bits_;
}

std::optional<int64_t> GgufValue::as_int() const {
  if (!is_integer_type(type_)) return std::nullopt;
  if (is_signed_integer(type_)) return sign_extend(bits_, gguf_fixed_width_bytes(type_));
  if (bits_ > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
  return static_cast<int64_t>(bits_);
}

std::optional<double> GgufValue::as_float() const {
  if (type_ == GgufValueType::kFloat32) return std::bit_cast<float>(static_cast<uint32_t>(bits_));
  if (type_ == GgufValueType::kFloat64) return std::bit_cast<double>(bits_);
  return std::nullopt;
}

std::optional<bool> GgufValue::as_bool() const {
  if (type_ != GgufValueType::kBool) return std::nullopt;
  return bits_ != 0;
}

std::optional<std::string_view> GgufValue::as_string() const {
  if (type_ != GgufValueType::kString) return std::nullopt;
  return string_;
}

GgufValue GgufValue::element(uint64_t i) const {
  assert(is_array() && i < num_elements_);
  if (element_type_ == GgufValueType::kString) return string(strings_[i]);
  if (element_type_ == GgufValueType::kArray) return arrays_[i];
  const size_t width = gguf_fixed_width_bytes(element_type_);
  return scalar(element_type_, raw_.subspan(i * width, width));
}

GgufValue GgufValue::scalar(GgufValueType type, std::span<const std::byte> bytes) {
  GgufValue v;
  v.type_ = type;
  assert(bytes.size() <= sizeof(v.bits_));
  // GGUF is little-endian, as is every host Tessera builds for.
  std::memcpy(&v.bits_, bytes.data(), std::min(bytes.size(), sizeof(v.bits_)));
  return v;
}

GgufValue GgufValue::string(std::string_view text) {
  GgufValue v;
  v.type_ = GgufValueType::kString;
  v.string_ = text;
  return v;
}

GgufValue GgufValue::fixed_array(GgufValueType element_type, uint64_t num_elements,
                                 std::span<const std::byte> raw) {
  GgufValue v;
  v.type_ = GgufValueType::kArray;
  v.element_type_ = element_type;
  v.num_elements_ = num_elements;
  v.raw_ = raw;
  return v;
}

GgufValue GgufValue::string_array(std::vector<std::string_view> strings) {
  GgufValue v;
  v.type_ = GgufValueType::kArray;
  v.element_type_ = GgufValueType::kString;
  v.num_elements_ = strings.size();
  v.strings_ = std::move(strings);
  return v;
}

GgufValue GgufValue::nested_array(std::vector<GgufValue> arrays) {
  GgufValue v;
  v.type_ = GgufValueType::kArray;
  v.element_type_ = GgufValueType::kArray;
  v.num_elements_ = arrays.size();
  v.arrays_ = std::move(arrays);
  return v;
}

std::string GgufValue::to_display_string(size_t max_elements, size_t max_string_chars) const {
  std::string out;
  switch (type_) {
    case GgufValueType::kString:
      append_escaped(&out, string_, max_string_chars);
      return out;
    case GgufValueType::kBool: return bits_ != 0 ? "true" : "false";
    case GgufValueType::kFloat32:
    case GgufValueType::kFloat64: {
      char buf[64];
      std::snprintf(buf, sizeof(buf), "%.9g", *as_float());
      return buf;
    }
    case GgufValueType::kArray: {
      out = "[";
      const uint64_t shown = std::min<uint64_t>(num_elements_, max_elements);
      for (uint64_t i = 0; i < shown; ++i) {
        if (i > 0) out += ", ";
        out += element(i).to_display_string(max_elements, max_string_chars);
      }
      if (shown < num_elements_) {
        out += (shown > 0 ? ", ... (" : "... (") + std::to_string(num_elements_) + " " +
               std::string(gguf_value_type_name(element_type_)) + ")";
      }
      out += "]";
      return out;
    }
    default:
      if (is_signed_integer(type_)) return std::to_string(*as_int());
      return std::to_string(bits_);
  }
}

}  // namespace tessera::loader
