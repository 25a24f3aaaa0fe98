#include "gguf_builder.h"

#include <algorithm>

namespace tessera::loader::testing {

ByteWriter& ByteWriter::put_string(std::string_view s) {
  put(static_cast<uint64_t>(s.size()));
  const size_t at = bytes_.size();
  bytes_.resize(at + s.size());
  if (!s.empty()) std::memcpy(bytes_.data() + at, s.data(), s.size());
  return *this;
}

ByteWriter& ByteWriter::put_bytes(const std::vector<std::byte>& b) {
  bytes_.insert(bytes_.end(), b.begin(), b.end());
  return *this;
}

std::vector<std::byte> encode_string_array(const std::vector<std::string>& strings) {
  ByteWriter w;
  w.put(static_cast<uint32_t>(GgufValueType::kString)).put(static_cast<uint64_t>(strings.size()));
  for (const auto& s : strings) w.put_string(s);
  return w.take();
}

std::vector<std::byte> encode_nested_array(const std::vector<std::vector<std::byte>>& arrays) {
  ByteWriter w;
  w.put(static_cast<uint32_t>(GgufValueType::kArray)).put(static_cast<uint64_t>(arrays.size()));
  for (const auto& a : arrays) w.put_bytes(a);
  return w.take();
}

GgufBuilder& GgufBuilder::kv_string(std::string_view key, std::string_view value) {
  ByteWriter w;
  w.put_string(value);
  return kv_encoded(key, static_cast<uint32_t>(GgufValueType::kString), w.take());
}

GgufBuilder& GgufBuilder::kv_encoded(std::string_view key, uint32_t type_id, std::vector<std::byte> value) {
  ByteWriter w;
  w.put_string(key).put(type_id).put_bytes(value);
  const auto encoded = w.take();
  kv_bytes_.insert(kv_bytes_.end(), encoded.begin(), encoded.end());
  ++num_kv_;
  return *this;
}

GgufBuilder& GgufBuilder::tensor(BuilderTensor t) {
  tensors_.push_back(std::move(t));
  return *this;
}

GgufBuilder& GgufBuilder::tensor(std::string name, std::vector<uint64_t> dims, kernels::cpu::GgmlType type) {
  const auto traits = kernels::cpu::ggml_type_traits(type);
  uint64_t num_elements = 1;
  for (uint64_t d : dims) num_elements *= d;
  const uint64_t num_bytes = num_elements / static_cast<uint64_t>(traits->block_size) *
                             static_cast<uint64_t>(traits->block_bytes);
  BuilderTensor t;
  t.name = std::move(name);
  t.dims = std::move(dims);
  t.type = static_cast<uint32_t>(type);
  t.data.resize(num_bytes);
  for (size_t i = 0; i < t.data.size(); ++i) t.data[i] = static_cast<std::byte>((i * 31 + tensors_.size()) & 0xFF);
  return tensor(std::move(t));
}

GgufBuilder& GgufBuilder::alignment(uint32_t alignment) {
  alignment_ = alignment;
  return kv("general.alignment", GgufValueType::kUint32, alignment);
}

std::vector<std::byte> GgufBuilder::build() const {
  auto align_up = [this](uint64_t x) { return (x + alignment_ - 1) / alignment_ * alignment_; };
  ByteWriter w;
  w.put(magic_).put(version_);
  w.put(tensor_count_override_.value_or(tensors_.size()));
  w.put(kv_count_override_.value_or(num_kv_));
  w.put_bytes(kv_bytes_);
  std::vector<uint64_t> offsets;
  uint64_t next = 0;
  for (const auto& t : tensors_) {
    const uint64_t offset = t.offset_override.value_or(next);
    offsets.push_back(offset);
    if (offset <= (uint64_t{1} << 30)) next = align_up(std::max(next, offset + t.data.size()));
    w.put_string(t.name).put(static_cast<uint32_t>(t.dims.size()));
    for (uint64_t d : t.dims) w.put(d);
    w.put(t.type).put(offset);
  }
  std::vector<std::byte> out = w.take();
  if (tensors_.empty()) return out;
  const uint64_t data_offset = align_up(out.size());
  out.resize(data_offset, std::byte{0});
  for (size_t i = 0; i < tensors_.size(); ++i) {
    const auto& t = tensors_[i];
    // Offsets far out (tests of out-of-range tensors) are declared, not written.
    if (offsets[i] > (uint64_t{1} << 30)) continue;
    const uint64_t end = data_offset + offsets[i] + t.data.size();
    if (out.size() < end) out.resize(end, std::byte{0});
    std::copy(t.data.begin(), t.data.end(), out.begin() + static_cast<std::ptrdiff_t>(data_offset + offsets[i]));
  }
  return out;
}

}  // namespace tessera::loader::testing
