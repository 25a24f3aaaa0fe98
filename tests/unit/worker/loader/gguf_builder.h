// Writes GGUF files byte by byte for tests, including malformed ones: every count,
// length and offset can be overridden.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "kernels/cpu/ggml_types.h"
#include "worker/loader/gguf_value.h"

namespace tessera::loader::testing {

// Little-endian byte appender.
class ByteWriter {
 public:
  template <typename T>
  ByteWriter& put(T value) {
    const size_t at = bytes_.size();
    bytes_.resize(at + sizeof(T));
    std::memcpy(bytes_.data() + at, &value, sizeof(T));
    return *this;
  }
  ByteWriter& put_string(std::string_view s);
  ByteWriter& put_bytes(const std::vector<std::byte>& b);
  std::vector<std::byte> take() { return std::move(bytes_); }
  size_t size() const { return bytes_.size(); }

 private:
  std::vector<std::byte> bytes_;
};

// The encoding of an array value after its type tag: element type, count, elements.
std::vector<std::byte> encode_string_array(const std::vector<std::string>& strings);
std::vector<std::byte> encode_nested_array(const std::vector<std::vector<std::byte>>& arrays);
template <typename T>
std::vector<std::byte> encode_array(GgufValueType element_type, const std::vector<T>& values) {
  ByteWriter w;
  w.put(static_cast<uint32_t>(element_type)).put(static_cast<uint64_t>(values.size()));
  for (const T& v : values) w.put(v);
  return w.take();
}

struct BuilderTensor {
  std::string name;
  std::vector<uint64_t> dims;
  uint32_t type = 0;
  std::vector<std::byte> data;
  std::optional<uint64_t> offset_override;
};

class GgufBuilder {
 public:
  explicit GgufBuilder(uint32_t version = 3) : version_(version) {}

  template <typename T>
  GgufBuilder& kv(std::string_view key, GgufValueType type, T value) {
    ByteWriter w;
    w.put(value);
    return kv_encoded(key, static_cast<uint32_t>(type), w.take());
  }
  GgufBuilder& kv_string(std::string_view key, std::string_view value);
  GgufBuilder& kv_array(std::string_view key, std::vector<std::byte> encoded_array) {
    return kv_encoded(key, static_cast<uint32_t>(GgufValueType::kArray), std::move(encoded_array));
  }
  // Any type id and any value bytes, for malformed entries.
  GgufBuilder& kv_encoded(std::string_view key, uint32_t type_id, std::vector<std::byte> value);

  // Data offsets are assigned in order at the file's alignment unless overridden.
  GgufBuilder& tensor(BuilderTensor t);
  // Convenience: a tensor of the given type whose data is `num_bytes` bytes of a pattern.
  GgufBuilder& tensor(std::string name, std::vector<uint64_t> dims, kernels::cpu::GgmlType type);

  // Sets general.alignment (u32) and lays out the data with it.
  GgufBuilder& alignment(uint32_t alignment);

  GgufBuilder& override_tensor_count(uint64_t n) { tensor_count_override_ = n; return *this; }
  GgufBuilder& override_kv_count(uint64_t n) { kv_count_override_ = n; return *this; }
  GgufBuilder& magic(uint32_t m) { magic_ = m; return *this; }

  std::vector<std::byte> build() const;

 private:
  uint32_t magic_ = 0x46554747;
  uint32_t version_;
  uint64_t alignment_ = 32;
  uint64_t num_kv_ = 0;
  std::vector<std::byte> kv_bytes_;
  std::vector<BuilderTensor> tensors_;
  std::optional<uint64_t> tensor_count_override_;
  std::optional<uint64_t> kv_count_override_;
};

}  // namespace tessera::loader::testing
