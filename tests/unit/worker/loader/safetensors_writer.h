// Writes safetensors files for tests, well-formed or not.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace tessera::loader::testing {

struct SafetensorsEntry {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  std::vector<std::byte> data;
};

// The 8-byte length, the header text as given, then the data section.
inline std::vector<std::byte> make_raw_safetensors(const std::string& header, const std::vector<std::byte>& data) {
  std::vector<std::byte> out(8 + header.size());
  const uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  std::memcpy(out.data() + 8, header.data(), header.size());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

// Tensors laid out back to back in the given order; optional __metadata__.
inline std::vector<std::byte> make_safetensors(const std::vector<SafetensorsEntry>& entries,
                                               const nlohmann::json& metadata = nullptr) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.is_null()) header["__metadata__"] = metadata;
  std::vector<std::byte> data;
  for (const auto& e : entries) {
    header[e.name] = {{"dtype", e.dtype}, {"shape", e.shape}, {"data_offsets", {data.size(), data.size() + e.data.size()}}};
    data.insert(data.end(), e.data.begin(), e.data.end());
  }
  return make_raw_safetensors(header.dump(), data);
}

inline std::vector<std::byte> pattern_bytes(size_t n, unsigned seed) {
  std::vector<std::byte> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<std::byte>((i * 13 + seed * 7 + 1) & 0xFF);
  return out;
}

}  // namespace tessera::loader::testing
