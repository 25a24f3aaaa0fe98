#include "worker/loader/gguf_file.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <utility>

#include "kernels/cpu/dequantize.h"
#include "worker/loader/error_text.h"

namespace tessera::loader {

namespace {

constexpr uint32_t kGgufMagic = 0x46554747;  // "GGUF" read as a little-endian u32
constexpr uint32_t kMaxTensorDims = 4;        // ggml's GGML_MAX_DIMS
constexpr uint64_t kMaxAlignment = 1u << 24;

// Sequential reader over the file's bytes. Every read checks the remaining length first,
// so no read can pass the end however corrupt the lengths are.
class Cursor {
 public:
  explicit Cursor(std::span<const std::byte> bytes) : bytes_(bytes) {}

  size_t pos() const { return pos_; }
  size_t remaining() const { return bytes_.size() - pos_; }

  Status need(uint64_t num_bytes, std::string_view what) const {
    if (num_bytes > remaining()) {
      return invalid_argument("offset " + std::to_string(pos_) + ": " + std::string(what) +
                              " needs " + std::to_string(num_bytes) + " bytes but only " +
                              std::to_string(remaining()) + " remain (truncated or corrupt file)");
    }
    return Status::ok();
  }

  Status take(uint64_t num_bytes, std::string_view what, std::span<const std::byte>* out) {
    TESSERA_RETURN_IF_ERROR(need(num_bytes, what));
    *out = bytes_.subspan(pos_, static_cast<size_t>(num_bytes));
    pos_ += static_cast<size_t>(num_bytes);
    return Status::ok();
  }

  template <typename T>
  Status read(T* out, std::string_view what) {
    std::span<const std::byte> raw;
    TESSERA_RETURN_IF_ERROR(take(sizeof(T), what, &raw));
    std::memcpy(out, raw.data(), sizeof(T));
    return Status::ok();
  }

  Status read_string(std::string_view* out, uint64_t max_bytes, std::string_view what) {
    const size_t start = pos_;
    uint64_t length = 0;
    TESSERA_RETURN_IF_ERROR(read(&length, what));
    if (length > max_bytes) {
      return invalid_argument("offset " + std::to_string(start) + ": " + std::string(what) +
                              " has length " + std::to_string(length) + ", above the limit of " +
                              std::to_string(max_bytes));
    }
    std::span<const std::byte> raw;
    TESSERA_RETURN_IF_ERROR(take(length, what, &raw));
    *out = std::string_view(reinterpret_cast<const char*>(raw.data()), raw.size());
    return Status::ok();
  }

 private:
  std::span<const std::byte> bytes_;
  size_t pos_ = 0;
};

}  // namespace

// Fills a GgufFile from its bytes; a class (not free functions) so it can reach the
// file's private members as GgufFile's friend.
class GgufParser {
 public:
  GgufParser(GgufFile* file, const GgufLimits& limits)
      : file_(file), limits_(limits), cursor_(file->bytes_.bytes()) {}

  Status parse() {
    TESSERA_RETURN_IF_ERROR(parse_header());
    for (uint64_t i = 0; i < num_metadata_entries_; ++i) {
      TESSERA_RETURN_IF_ERROR(parse_metadata_entry(i));
    }
    TESSERA_RETURN_IF_ERROR(read_alignment());
    file_->tensors_.reserve(static_cast<size_t>(num_tensors_));
    for (uint64_t i = 0; i < num_tensors_; ++i) {
      TESSERA_RETURN_IF_ERROR(parse_tensor_info(i));
    }
    return place_tensor_data();
  }

 private:
  Status parse_header() {
    uint32_t magic = 0;
    TESSERA_RETURN_IF_ERROR(cursor_.read(&magic, "the GGUF magic"));
    if (magic != kGgufMagic) return invalid_argument("not a GGUF file (the first 4 bytes are not 'GGUF')");
    uint32_t version = 0;
    TESSERA_RETURN_IF_ERROR(cursor_.read(&version, "the GGUF version"));
    if (version == 1) {
      return unimplemented("GGUF version 1 is unsupported (its counts are 32-bit); convert the "
                           "model again with a current llama.cpp");
    }
    if (version != 2 && version != 3) {
      // A big-endian file (gguf-py --bigendian) reads as 0x02000000 or 0x03000000 here.
      if ((version & 0xFFFFu) == 0 && ((version >> 24) == 2 || (version >> 24) == 3)) {
        return unimplemented("big-endian GGUF files are unsupported");
      }
      return unimplemented("unsupported GGUF version " + std::to_string(version) +
                           " (this reader supports 2 and 3)");
    }
    file_->version_ = version;
    TESSERA_RETURN_IF_ERROR(cursor_.read(&num_tensors_, "the tensor count"));
    TESSERA_RETURN_IF_ERROR(cursor_.read(&num_metadata_entries_, "the metadata count"));
    // The smallest tensor info is a 1-byte name with one dimension: 8+1+4+8+4+8 bytes;
    // the smallest metadata entry a 1-byte key with a u8 value: 8+1+4+1 bytes.
    TESSERA_RETURN_IF_ERROR(check_count(num_tensors_, limits_.max_tensors, 33, "tensor count"));
    TESSERA_RETURN_IF_ERROR(
        check_count(num_metadata_entries_, limits_.max_metadata_entries, 14, "metadata count"));
    return Status::ok();
  }

  Status check_count(uint64_t count, uint64_t limit, uint64_t min_bytes_each, std::string_view what) {
    if (count > limit) {
      return invalid_argument("header: " + std::string(what) + " " + std::to_string(count) +
                              " exceeds the limit of " + std::to_string(limit));
    }
    if (count > cursor_.remaining() / min_bytes_each) {
      return invalid_argument("header: " + std::string(what) + " " + std::to_string(count) +
                              " cannot fit in the " + std::to_string(cursor_.remaining()) +
                              " bytes after the header (truncated or corrupt file)");
    }
    return Status::ok();
  }

  Status parse_metadata_entry(uint64_t index) {
    const size_t entry_offset = cursor_.pos();
    std::string_view key;
    TESSERA_RETURN_IF_ERROR(cursor_.read_string(&key, limits_.max_key_bytes,
                                                "the key of metadata entry " + std::to_string(index)));
    if (key.empty()) {
      return invalid_argument("offset " + std::to_string(entry_offset) + ": metadata entry " +
                              std::to_string(index) + " has an empty key");
    }
    uint32_t type_id = 0;
    TESSERA_RETURN_IF_ERROR(cursor_.read(&type_id, "the value type of key " + quote_name(key)));
    GgufValue value;
    Status status = parse_value(type_id, 0, &value);
    if (!status.is_ok()) return status.with_context("key " + quote_name(key));
    if (!file_->metadata_index_.emplace(key, file_->metadata_.size()).second) {
      return invalid_argument("offset " + std::to_string(entry_offset) + ": duplicate metadata key " +
                              quote_name(key));
    }
    file_->metadata_.push_back({key, std::move(value)});
    return Status::ok();
  }

  Status parse_value(uint32_t type_id, uint64_t depth, GgufValue* out) {
    if (!is_valid_gguf_value_type(type_id)) {
      return invalid_argument("offset " + std::to_string(cursor_.pos()) + ": unknown value type " +
                              std::to_string(type_id));
    }
    const auto type = static_cast<GgufValueType>(type_id);
    if (type == GgufValueType::kString) {
      std::string_view text;
      TESSERA_RETURN_IF_ERROR(cursor_.read_string(&text, std::numeric_limits<uint64_t>::max(), "a string value"));
      *out = GgufValue::string(text);
      return Status::ok();
    }
    if (type == GgufValueType::kArray) return parse_array(depth, out);
    std::span<const std::byte> raw;
    const size_t value_offset = cursor_.pos();
    TESSERA_RETURN_IF_ERROR(cursor_.take(gguf_fixed_width_bytes(type), "a scalar value", &raw));
    if (type == GgufValueType::kBool && static_cast<uint8_t>(raw[0]) > 1) {
      return invalid_argument("offset " + std::to_string(value_offset) + ": bool value " +
                              std::to_string(static_cast<uint8_t>(raw[0])) + " is neither 0 nor 1");
    }
    *out = GgufValue::scalar(type, raw);
    return Status::ok();
  }

  Status parse_array(uint64_t depth, GgufValue* out) {
    const size_t array_offset = cursor_.pos();
    const std::string where = "offset " + std::to_string(array_offset) + ": array";
    if (depth >= limits_.max_array_depth) {
      return invalid_argument(where + " nests deeper than the limit of " +
                              std::to_string(limits_.max_array_depth));
    }
    uint32_t element_type_id = 0;
    uint64_t count = 0;
    TESSERA_RETURN_IF_ERROR(cursor_.read(&element_type_id, "an array element type"));
    TESSERA_RETURN_IF_ERROR(cursor_.read(&count, "an array length"));
    if (!is_valid_gguf_value_type(element_type_id)) {
      return invalid_argument(where + " has unknown element type " + std::to_string(element_type_id));
    }
    const auto element_type = static_cast<GgufValueType>(element_type_id);
    const size_t width = gguf_fixed_width_bytes(element_type);
    if (width > 0) {
      if (count > cursor_.remaining() / width) {
        return invalid_argument(where + " of " + std::to_string(count) + " " +
                                std::string(gguf_value_type_name(element_type)) +
                                " elements does not fit in the remaining " + std::to_string(cursor_.remaining()) +
                                " bytes");
      }
      std::span<const std::byte> raw;
      TESSERA_RETURN_IF_ERROR(cursor_.take(count * width, "array elements", &raw));
      if (element_type == GgufValueType::kBool) {
        for (size_t i = 0; i < raw.size(); ++i) {
          if (static_cast<uint8_t>(raw[i]) > 1) {
            return invalid_argument(where + ": bool element " + std::to_string(i) + " is neither 0 nor 1");
          }
        }
      }
      *out = GgufValue::fixed_array(element_type, count, raw);
      return Status::ok();
    }
    // Strings take at least their 8-byte length; arrays their 12-byte type and length.
    const uint64_t min_bytes = element_type == GgufValueType::kString ? 8 : 12;
    if (count > cursor_.remaining() / min_bytes) {
      return invalid_argument(where + " of " + std::to_string(count) + " " +
                              std::string(gguf_value_type_name(element_type)) +
                              " elements does not fit in the remaining " + std::to_string(cursor_.remaining()) +
                              " bytes");
    }
    if (count > limits_.max_total_array_objects - num_array_objects_) {
      return invalid_argument(where + " of " + std::to_string(count) +
                              " elements takes the file past the limit of " +
                              std::to_string(limits_.max_total_array_objects) +
                              " string and nested-array elements");
    }
    num_array_objects_ += count;
    if (element_type == GgufValueType::kString) {
      std::vector<std::string_view> strings;
      strings.reserve(static_cast<size_t>(count));
      for (uint64_t i = 0; i < count; ++i) {
        std::string_view text;
        TESSERA_RETURN_IF_ERROR(cursor_.read_string(&text, std::numeric_limits<uint64_t>::max(),
                                                    "a string array element"));
        strings.push_back(text);
      }
      *out = GgufValue::string_array(std::move(strings));
      return Status::ok();
    }
    std::vector<GgufValue> arrays;
    arrays.reserve(static_cast<size_t>(count));
    for (uint64_t i = 0; i < count; ++i) {
      GgufValue nested;
      TESSERA_RETURN_IF_ERROR(parse_array(depth + 1, &nested));
      arrays.push_back(std::move(nested));
    }
    *out = GgufValue::nested_array(std::move(arrays));
    return Status::ok();
  }

  Status read_alignment() {
    const GgufValue* value = file_->find("general.alignment");
    if (value == nullptr) return Status::ok();
    const auto alignment = value->as_uint();
    if (!alignment || *alignment == 0 || *alignment > kMaxAlignment || (*alignment & (*alignment - 1)) != 0) {
      return invalid_argument("key 'general.alignment' must be a power of two up to " +
                              std::to_string(kMaxAlignment) + ", got " + value->to_display_string());
    }
    file_->alignment_ = *alignment;
    return Status::ok();
  }

  Status parse_tensor_info(uint64_t index) {
    const size_t info_offset = cursor_.pos();
    GgufTensorInfo info;
    std::string_view name;
    TESSERA_RETURN_IF_ERROR(cursor_.read_string(&name, limits_.max_tensor_name_bytes,
                                                "the name of tensor " + std::to_string(index)));
    const std::string where = "offset " + std::to_string(info_offset) + ": tensor " + quote_name(name);
    if (name.empty()) return invalid_argument(where + " has an empty name");
    uint32_t num_dims = 0;
    TESSERA_RETURN_IF_ERROR(cursor_.read(&num_dims, "the dimension count of tensor " + quote_name(name)));
    if (num_dims == 0 || num_dims > kMaxTensorDims) {
      return invalid_argument(where + " has " + std::to_string(num_dims) + " dimensions (1 to " +
                              std::to_string(kMaxTensorDims) + " allowed)");
    }
    int64_t num_elements = 1;
    for (uint32_t d = 0; d < num_dims; ++d) {
      uint64_t dim = 0;
      TESSERA_RETURN_IF_ERROR(cursor_.read(&dim, "a dimension of tensor " + quote_name(name)));
      if (dim == 0 || dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          static_cast<int64_t>(dim) > std::numeric_limits<int64_t>::max() / num_elements) {
        return invalid_argument(where + ": dimension " + std::to_string(d) + " (" + std::to_string(dim) +
                                ") is zero or makes the element count overflow");
      }
      num_elements *= static_cast<int64_t>(dim);
      info.dims.push_back(static_cast<int64_t>(dim));
    }
    uint32_t type_id = 0;
    TESSERA_RETURN_IF_ERROR(cursor_.read(&type_id, "the type of tensor " + quote_name(name)));
    const auto traits = kernels::cpu::ggml_type_traits(type_id);
    if (!traits) {
      return unimplemented(where + " has unknown or unsupported ggml type " + std::to_string(type_id));
    }
    info.type = static_cast<GgmlType>(type_id);
    const auto row_bytes = kernels::cpu::row_size_bytes(info.type, info.dims[0]);
    if (!row_bytes) {
      return invalid_argument(where + ": its first dimension " + std::to_string(info.dims[0]) +
                              " is not a multiple of the " + std::string(traits->name) + " block size " +
                              std::to_string(traits->block_size));
    }
    const int64_t num_rows = num_elements / info.dims[0];
    if (*row_bytes != 0 && num_rows > std::numeric_limits<int64_t>::max() / *row_bytes) {
      return invalid_argument(where + ": its byte size overflows");
    }
    info.size_bytes = static_cast<uint64_t>(*row_bytes * num_rows);
    info.num_elements = num_elements;
    TESSERA_RETURN_IF_ERROR(cursor_.read(&info.offset_bytes, "the data offset of tensor " + quote_name(name)));
    if (info.offset_bytes % file_->alignment_ != 0) {
      return invalid_argument(where + ": data offset " + std::to_string(info.offset_bytes) +
                              " is not a multiple of the alignment " + std::to_string(file_->alignment_));
    }
    if (!file_->tensor_index_.emplace(name, file_->tensors_.size()).second) {
      return invalid_argument(where + ": duplicate tensor name");
    }
    info.name = std::string(name);
    file_->tensors_.push_back(std::move(info));
    return Status::ok();
  }

  Status place_tensor_data() {
    const uint64_t file_size = file_->bytes_.size();
    const uint64_t header_end = cursor_.pos();
    // header_end <= file_size and alignment <= 2^24, so this cannot overflow.
    const uint64_t data_offset = (header_end + file_->alignment_ - 1) / file_->alignment_ * file_->alignment_;
    file_->data_offset_ = data_offset;
    if (file_->tensors_.empty()) return Status::ok();
    if (data_offset > file_size) {
      return invalid_argument("the tensor data section would start at offset " + std::to_string(data_offset) +
                              ", past the end of the " + std::to_string(file_size) + "-byte file");
    }
    const uint64_t data_size = file_size - data_offset;
    for (const GgufTensorInfo& t : file_->tensors_) {
      if (t.offset_bytes > data_size || t.size_bytes > data_size - t.offset_bytes) {
        return invalid_argument("tensor " + quote_name(t.name) + ": its " + std::to_string(t.size_bytes) +
                                " bytes at data offset " + std::to_string(t.offset_bytes) +
                                " lie past the end of the " + std::to_string(data_size) +
                                "-byte data section (truncated file?)");
      }
    }
    std::vector<const GgufTensorInfo*> by_offset;
    by_offset.reserve(file_->tensors_.size());
    for (const GgufTensorInfo& t : file_->tensors_) by_offset.push_back(&t);
    std::sort(by_offset.begin(), by_offset.end(),
              [](const GgufTensorInfo* a, const GgufTensorInfo* b) { return a->offset_bytes < b->offset_bytes; });
    for (size_t i = 1; i < by_offset.size(); ++i) {
      const GgufTensorInfo& prev = *by_offset[i - 1];
      if (prev.offset_bytes + prev.size_bytes > by_offset[i]->offset_bytes) {
        return invalid_argument("tensors " + quote_name(prev.name) + " and " + quote_name(by_offset[i]->name) +
                                " overlap in the data section");
      }
    }
    return Status::ok();
  }

  GgufFile* file_;
  GgufLimits limits_;
  Cursor cursor_;
  uint64_t num_tensors_ = 0;
  uint64_t num_metadata_entries_ = 0;
  uint64_t num_array_objects_ = 0;
};

Result<GgufFile> GgufFile::parse(FileBytes bytes, const GgufLimits& limits) {
  GgufFile file;
  file.bytes_ = std::move(bytes);
  TESSERA_RETURN_IF_ERROR(GgufParser(&file, limits).parse());
  return Result<GgufFile>(std::move(file));
}

Result<GgufFile> GgufFile::open(const std::string& path, const GgufLimits& limits) {
  auto bytes = FileBytes::map(path);
  if (!bytes.is_ok()) return bytes.status();
  auto file = parse(std::move(bytes).value(), limits);
  if (!file.is_ok()) return file.status().with_context(path);
  return file;
}

Result<GgufFile> GgufFile::from_buffer(std::vector<std::byte> buffer, const GgufLimits& limits) {
  return parse(FileBytes::from_buffer(std::move(buffer)), limits);
}

Result<GgufFile> GgufFile::from_unowned_bytes(std::span<const std::byte> bytes, const GgufLimits& limits) {
  return parse(FileBytes::borrow(bytes), limits);
}

const GgufValue* GgufFile::find(std::string_view key) const {
  auto it = metadata_index_.find(key);
  return it == metadata_index_.end() ? nullptr : &metadata_[it->second].value;
}

std::optional<std::string_view> GgufFile::get_string(std::string_view key) const {
  const GgufValue* v = find(key);
  return v ? v->as_string() : std::nullopt;
}

std::optional<uint64_t> GgufFile::get_uint(std::string_view key) const {
  const GgufValue* v = find(key);
  return v ? v->as_uint() : std::nullopt;
}

std::optional<int64_t> GgufFile::get_int(std::string_view key) const {
  const GgufValue* v = find(key);
  return v ? v->as_int() : std::nullopt;
}

std::optional<double> GgufFile::get_float(std::string_view key) const {
  const GgufValue* v = find(key);
  return v ? v->as_float() : std::nullopt;
}

std::optional<bool> GgufFile::get_bool(std::string_view key) const {
  const GgufValue* v = find(key);
  return v ? v->as_bool() : std::nullopt;
}

namespace {

Result<const GgufValue*> find_array(const GgufFile& file, std::string_view key) {
  const GgufValue* v = file.find(key);
  if (v == nullptr) return not_found("no metadata key " + quote_name(key));
  if (!v->is_array()) {
    return invalid_argument("metadata key " + quote_name(key) + " holds a " +
                            std::string(gguf_value_type_name(v->type())) + ", not an array");
  }
  return v;
}

Status wrong_element_type(std::string_view key, const GgufValue& v, std::string_view wanted) {
  return invalid_argument("metadata key " + quote_name(key) + " is an array of " +
                          std::string(gguf_value_type_name(v.element_type())) + ", not of " +
                          std::string(wanted));
}

}  // namespace

Result<std::vector<std::string_view>> GgufFile::get_string_array(std::string_view key) const {
  auto array = find_array(*this, key);
  if (!array.is_ok()) return array.status();
  const GgufValue& v = **array;
  if (v.element_type() != GgufValueType::kString) return wrong_element_type(key, v, "strings");
  const auto strings = v.string_elements();
  return std::vector<std::string_view>(strings.begin(), strings.end());
}

Result<std::vector<float>> GgufFile::get_float_array(std::string_view key) const {
  auto array = find_array(*this, key);
  if (!array.is_ok()) return array.status();
  const GgufValue& v = **array;
  if (v.element_type() != GgufValueType::kFloat32 && v.element_type() != GgufValueType::kFloat64) {
    return wrong_element_type(key, v, "floats");
  }
  std::vector<float> out(static_cast<size_t>(v.num_elements()));
  const std::byte* raw = v.raw_elements().data();
  for (size_t i = 0; i < out.size(); ++i) {
    if (v.element_type() == GgufValueType::kFloat32) {
      std::memcpy(&out[i], raw + 4 * i, 4);
    } else {
      double d;
      std::memcpy(&d, raw + 8 * i, 8);
      out[i] = static_cast<float>(d);
    }
  }
  return out;
}

Result<std::vector<int64_t>> GgufFile::get_int_array(std::string_view key) const {
  auto array = find_array(*this, key);
  if (!array.is_ok()) return array.status();
  const GgufValue& v = **array;
  if (!is_integer_type(v.element_type())) return wrong_element_type(key, v, "integers");
  std::vector<int64_t> out;
  out.reserve(static_cast<size_t>(v.num_elements()));
  for (uint64_t i = 0; i < v.num_elements(); ++i) {
    const auto element = v.element(i).as_int();
    if (!element) {
      return invalid_argument("metadata key " + quote_name(key) + ": element " + std::to_string(i) +
                              " does not fit int64");
    }
    out.push_back(*element);
  }
  return out;
}

const GgufTensorInfo* GgufFile::find_tensor(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

std::span<const std::byte> GgufFile::tensor_data(const GgufTensorInfo& info) const {
  const auto all = bytes_.bytes();
  // Parsing checked this range; the check is repeated for infos that did not come from
  // this file, so a misuse yields an empty span rather than a wild read.
  if (data_offset_ > all.size() || info.offset_bytes > all.size() - data_offset_ ||
      info.size_bytes > all.size() - data_offset_ - info.offset_bytes) {
    return {};
  }
  return all.subspan(static_cast<size_t>(data_offset_ + info.offset_bytes), static_cast<size_t>(info.size_bytes));
}

Status GgufFile::dequantize_tensor(const GgufTensorInfo& info, std::span<float> out) const {
  if (out.size() != static_cast<size_t>(info.num_elements)) {
    return invalid_argument("tensor " + quote_name(info.name) + " has " + std::to_string(info.num_elements) +
                            " elements, the output holds " + std::to_string(out.size()));
  }
  kernels::cpu::DequantizeParams params;
  params.type = info.type;
  params.src = tensor_data(info);
  params.dst = out;
  Status status = kernels::cpu::dequantize(params);
  if (!status.is_ok()) return status.with_context("tensor " + quote_name(info.name));
  return Status::ok();
}

}  // namespace tessera::loader
