// A GGUF model file (v2 or v3): metadata, tensor infos and the tensor data, mapped
// read-only. https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
//
// Parsing validates everything up front — every length and offset against the file size,
// counts against what the remaining bytes could hold, tensor ranges inside the data
// section and disjoint — so accessors need no further checks. A corrupt or hostile file
// yields an error naming the offset, key or tensor; it never reads out of bounds, and it
// cannot make the parser allocate much more than a small multiple of the file's size.
//
// Immutable after open(); any thread may call the const accessors.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "kernels/cpu/ggml_types.h"
#include "tessera/common/status.h"
#include "worker/loader/gguf_value.h"
#include "worker/loader/mapped_file.h"

namespace tessera::loader {

using kernels::cpu::GgmlType;

struct GgufMetadataEntry {
  std::string_view key;  // view into the file
  GgufValue value;
};

struct GgufTensorInfo {
  std::string name;
  // ggml order: dims[0] is the contiguous (innermost) dimension, the reverse of the
  // PyTorch/safetensors shape. 1 to 4 entries, each >= 1.
  std::vector<int64_t> dims;
  GgmlType type = GgmlType::kF32;
  uint64_t offset_bytes = 0;  // from the start of the data section
  uint64_t size_bytes = 0;
  int64_t num_elements = 0;
};

struct GgufLimits {
  // Generous for real models (the largest vocabularies have ~260k tokens, the largest
  // MoE checkpoints a few tens of thousands of tensors) yet bounded.
  uint64_t max_tensors = 1u << 20;
  uint64_t max_metadata_entries = 1u << 20;
  uint64_t max_key_bytes = 1u << 16;
  uint64_t max_tensor_name_bytes = 1024;
  uint64_t max_array_depth = 8;
  // Elements of string and nested arrays summed over the file: each costs an allocation
  // (16 bytes for a string view), unlike fixed-width arrays, which stay views.
  uint64_t max_total_array_objects = 1u << 23;
};

class GgufFile {
 public:
  static constexpr uint64_t kDefaultAlignment = 32;

  // Maps the file and parses it. Errors are prefixed with the path.
  [[nodiscard]] static Result<GgufFile> open(const std::string& path, const GgufLimits& limits = {});
  // Parses a buffer holding a whole GGUF file (tests and fuzzing).
  [[nodiscard]] static Result<GgufFile> from_buffer(std::vector<std::byte> buffer,
                                                    const GgufLimits& limits = {});
  // Parses bytes the caller owns and keeps alive, unchanged, for the GgufFile's lifetime
  // (a mapping made elsewhere; fuzzing the real model in place).
  [[nodiscard]] static Result<GgufFile> from_unowned_bytes(std::span<const std::byte> bytes,
                                                           const GgufLimits& limits = {});

  GgufFile(GgufFile&&) noexcept = default;
  GgufFile& operator=(GgufFile&&) noexcept = default;
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }  // from the start of the file
  size_t file_size() const { return bytes_.size(); }

  // ---- metadata ----
  // Every key/value in file order.
  const std::vector<GgufMetadataEntry>& metadata() const { return metadata_; }
  const GgufValue* find(std::string_view key) const;
  // nullopt when the key is missing or its value has another type (see GgufValue::as_*).
  std::optional<std::string_view> get_string(std::string_view key) const;
  std::optional<uint64_t> get_uint(std::string_view key) const;
  std::optional<int64_t> get_int(std::string_view key) const;
  std::optional<double> get_float(std::string_view key) const;
  std::optional<bool> get_bool(std::string_view key) const;
  // NOT_FOUND when missing, INVALID_ARGUMENT when not an array of the requested kind.
  // Strings are views into the file. Float arrays accept f32 or f64 elements, int arrays
  // any integer type whose values fit int64.
  [[nodiscard]] Result<std::vector<std::string_view>> get_string_array(std::string_view key) const;
  [[nodiscard]] Result<std::vector<float>> get_float_array(std::string_view key) const;
  [[nodiscard]] Result<std::vector<int64_t>> get_int_array(std::string_view key) const;

  // ---- tensors ----
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* find_tensor(std::string_view name) const;
  // The tensor's bytes (size_bytes of them). Precondition: info comes from this file.
  std::span<const std::byte> tensor_data(const GgufTensorInfo& info) const;
  // Dequantizes a tensor into out (num_elements floats) with kernels/cpu/dequantize.h.
  [[nodiscard]] Status dequantize_tensor(const GgufTensorInfo& info, std::span<float> out) const;

 private:
  friend class GgufParser;
  GgufFile() = default;
  [[nodiscard]] static Result<GgufFile> parse(FileBytes bytes, const GgufLimits& limits);

  FileBytes bytes_;
  uint32_t version_ = 0;
  uint64_t alignment_ = kDefaultAlignment;
  uint64_t data_offset_ = 0;
  std::vector<GgufMetadataEntry> metadata_;
  std::unordered_map<std::string_view, size_t> metadata_index_;  // keys view the file
  std::vector<GgufTensorInfo> tensors_;
  std::unordered_map<std::string_view, size_t> tensor_index_;  // names view the file
};

}  // namespace tessera::loader
