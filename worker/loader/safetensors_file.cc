#include "worker/loader/safetensors_file.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <limits>
#include <set>
#include <utility>

#include <nlohmann/json.hpp>

#include "worker/loader/error_text.h"

namespace tessera::loader {
namespace {

using Json = nlohmann::json;

constexpr int kMaxJsonDepth = 64;

// Parses JSON without exceptions, rejecting what nlohmann accepts silently but a
// checkpoint must not contain: duplicate keys (the last would win) and deep nesting.
Result<Json> parse_strict_json(std::string_view text, std::string_view what) {
  std::vector<std::set<std::string>> keys_per_object;
  std::string problem;
  Json::parser_callback_t callback = [&](int depth, Json::parse_event_t event, Json& parsed) {
    if (!problem.empty()) return true;
    switch (event) {
      case Json::parse_event_t::object_start:
        keys_per_object.emplace_back();
        break;
      case Json::parse_event_t::object_end:
        if (!keys_per_object.empty()) keys_per_object.pop_back();
        break;
      case Json::parse_event_t::key:
        if (!keys_per_object.empty() && parsed.is_string() &&
            !keys_per_object.back().insert(parsed.get<std::string>()).second) {
          problem = "duplicate key " + quote_name(parsed.get<std::string>());
        }
        break;
      default:
        break;
    }
    if (depth > kMaxJsonDepth) problem = "nesting deeper than " + std::to_string(kMaxJsonDepth);
    return true;
  };
  Json json = Json::parse(text.begin(), text.end(), callback, /*allow_exceptions=*/false);
  if (json.is_discarded()) return invalid_argument(std::string(what) + " is not valid JSON");
  if (!problem.empty()) return invalid_argument(std::string(what) + ": " + problem);
  return json;
}

// A non-negative JSON integer as uint64, or nullopt.
std::optional<uint64_t> as_u64(const Json& j) {
  if (j.is_number_unsigned()) return j.get<uint64_t>();
  if (j.is_number_integer()) {
    const auto v = j.get<int64_t>();
    if (v >= 0) return static_cast<uint64_t>(v);
  }
  return std::nullopt;
}

Result<FileBytes> read_small_file(const std::string& path, uint64_t max_bytes) {
  auto bytes = FileBytes::map(path);
  if (!bytes.is_ok()) return bytes.status();
  if (bytes->size() > max_bytes) {
    return invalid_argument(path + " is " + std::to_string(bytes->size()) + " bytes, above the limit of " +
                            std::to_string(max_bytes));
  }
  return bytes;
}

}  // namespace

std::string_view tensor_dtype_name(TensorDtype dtype) {
  switch (dtype) {
    case TensorDtype::kF32: return "F32";
    case TensorDtype::kF16: return "F16";
    case TensorDtype::kBF16: return "BF16";
    case TensorDtype::kI8: return "I8";
    case TensorDtype::kU8: return "U8";
  }
  return "unknown";
}

size_t tensor_dtype_bytes(TensorDtype dtype) {
  switch (dtype) {
    case TensorDtype::kF32: return 4;
    case TensorDtype::kF16:
    case TensorDtype::kBF16: return 2;
    case TensorDtype::kI8:
    case TensorDtype::kU8: return 1;
  }
  return 0;
}

std::optional<TensorDtype> parse_tensor_dtype(std::string_view name) {
  for (TensorDtype d : {TensorDtype::kF32, TensorDtype::kF16, TensorDtype::kBF16, TensorDtype::kI8, TensorDtype::kU8}) {
    if (tensor_dtype_name(d) == name) return d;
  }
  return std::nullopt;
}

// ---- SafetensorsFile ------------------------------------------------------------------

Result<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  auto bytes = FileBytes::map(path);
  if (!bytes.is_ok()) return bytes.status();
  SafetensorsFile file;
  file.bytes_ = std::move(bytes).value();
  Status status = file.parse_guarded();
  if (!status.is_ok()) return status.with_context(path);
  return Result<SafetensorsFile>(std::move(file));
}

Result<SafetensorsFile> SafetensorsFile::from_buffer(std::vector<std::byte> buffer) {
  SafetensorsFile file;
  file.bytes_ = FileBytes::from_buffer(std::move(buffer));
  TESSERA_RETURN_IF_ERROR(file.parse_guarded());
  return Result<SafetensorsFile>(std::move(file));
}

Status SafetensorsFile::parse_guarded() {
  // Every JSON access is type-checked first, so nlohmann should never throw; this is the
  // backstop that keeps a missed case an error rather than a crash.
  try {
    return parse();
  } catch (const std::exception& e) {
    return invalid_argument(std::string("malformed header: ") + e.what());
  }
}

Status SafetensorsFile::parse() {
  const auto all = bytes_.bytes();
  if (all.size() < 8) {
    return invalid_argument("file of " + std::to_string(all.size()) +
                            " bytes is too short for the 8-byte safetensors header length");
  }
  uint64_t header_bytes = 0;
  std::memcpy(&header_bytes, all.data(), 8);  // little-endian, as is the host
  if (header_bytes > kMaxHeaderBytes) {
    return invalid_argument("header length " + std::to_string(header_bytes) + " exceeds the limit of " +
                            std::to_string(kMaxHeaderBytes) + " (not a safetensors file?)");
  }
  if (header_bytes > all.size() - 8) {
    return invalid_argument("header length " + std::to_string(header_bytes) + " runs past the end of the " +
                            std::to_string(all.size()) + "-byte file (truncated?)");
  }
  const std::string_view header_text(reinterpret_cast<const char*>(all.data() + 8), header_bytes);
  // The format requires the header to start with '{'; checking it early also keeps a
  // random file from reaching the JSON parser.
  if (header_text.empty() || header_text.front() != '{') {
    return invalid_argument("the JSON header does not start with '{' (not a safetensors file?)");
  }
  auto parsed = parse_strict_json(header_text, "the JSON header");
  if (!parsed.is_ok()) return parsed.status();
  const Json& header = *parsed;
  if (!header.is_object()) return invalid_argument("the JSON header is not an object");

  data_offset_ = 8 + header_bytes;
  const uint64_t data_size = all.size() - data_offset_;
  struct Range {
    uint64_t begin;
    uint64_t end;
    size_t tensor;
  };
  std::vector<Range> ranges;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) return invalid_argument("__metadata__ is not an object");
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string()) {
          return invalid_argument("__metadata__ value of " + quote_name(key) + " is not a string");
        }
        metadata_.emplace(key, value.get<std::string>());
      }
      continue;
    }
    const std::string where = "tensor " + quote_name(name);
    if (!entry.is_object()) return invalid_argument(where + ": its entry is not an object");
    const auto dtype_it = entry.find("dtype");
    const auto shape_it = entry.find("shape");
    const auto offsets_it = entry.find("data_offsets");
    if (dtype_it == entry.end() || !dtype_it->is_string()) {
      return invalid_argument(where + ": missing or non-string \"dtype\"");
    }
    if (shape_it == entry.end() || !shape_it->is_array()) {
      return invalid_argument(where + ": missing or non-array \"shape\"");
    }
    if (offsets_it == entry.end() || !offsets_it->is_array() || offsets_it->size() != 2) {
      return invalid_argument(where + ": \"data_offsets\" must be an array [begin, end]");
    }
    const std::string dtype_name = dtype_it->get<std::string>();
    const auto dtype = parse_tensor_dtype(dtype_name);
    if (!dtype) {
      return unimplemented(where + " has dtype " + quote_name(dtype_name) +
                           ", which Tessera does not load (supported: F32, F16, BF16, I8, U8)");
    }
    TensorView view;
    view.name = name;
    view.dtype = *dtype;
    uint64_t num_elements = 1;
    for (const Json& dim : *shape_it) {
      const auto d = as_u64(dim);
      if (!d || *d > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return invalid_argument(where + ": shape entries must be non-negative integers");
      }
      if (*d != 0 && num_elements > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / *d) {
        return invalid_argument(where + ": its element count overflows");
      }
      num_elements *= *d;
      view.shape.push_back(static_cast<int64_t>(*d));
    }
    const auto begin = as_u64((*offsets_it)[0]);
    const auto end = as_u64((*offsets_it)[1]);
    if (!begin || !end || *begin > *end) {
      return invalid_argument(where + ": \"data_offsets\" must be non-negative integers with begin <= end");
    }
    if (*end > data_size) {
      return invalid_argument(where + ": data_offsets [" + std::to_string(*begin) + ", " + std::to_string(*end) +
                              ") run past the " + std::to_string(data_size) + "-byte data section");
    }
    const uint64_t element_bytes = tensor_dtype_bytes(*dtype);
    // num_elements < 2^63 and element_bytes <= 4; compare without multiplying past 2^64.
    if (num_elements > (*end - *begin) / element_bytes || num_elements * element_bytes != *end - *begin) {
      return invalid_argument(where + ": " + std::to_string(num_elements) + " " + dtype_name + " elements need " +
                              (num_elements > data_size ? std::string("more") : std::to_string(num_elements * element_bytes)) +
                              " bytes, but data_offsets span " + std::to_string(*end - *begin));
    }
    view.bytes = all.subspan(static_cast<size_t>(data_offset_ + *begin), static_cast<size_t>(*end - *begin));
    ranges.push_back({*begin, *end, tensors_.size()});
    tensors_.push_back(std::move(view));
  }
  std::sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  for (size_t i = 1; i < ranges.size(); ++i) {
    // Empty tensors occupy no bytes and cannot overlap anything.
    const Range& prev = ranges[i - 1];
    if (prev.end > ranges[i].begin && ranges[i].end > ranges[i].begin && prev.end > prev.begin) {
      return invalid_argument("tensors " + quote_name(tensors_[prev.tensor].name) + " and " +
                              quote_name(tensors_[ranges[i].tensor].name) + " overlap in the data section");
    }
  }
  // Keep tensors in data order: the order a sequential reader touches the file in.
  std::vector<TensorView> ordered;
  ordered.reserve(tensors_.size());
  for (const Range& r : ranges) ordered.push_back(std::move(tensors_[r.tensor]));
  tensors_ = std::move(ordered);
  for (size_t i = 0; i < tensors_.size(); ++i) index_.emplace(tensors_[i].name, i);
  return Status::ok();
}

const TensorView* SafetensorsFile::find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

// ---- SafetensorsModel -----------------------------------------------------------------

Result<SafetensorsModel> SafetensorsModel::open(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    const fs::path index = fs::path(path) / "model.safetensors.index.json";
    if (fs::exists(index, ec)) return open_index(index.string());
    const fs::path single = fs::path(path) / "model.safetensors";
    if (!fs::exists(single, ec)) {
      return not_found(path + " holds neither model.safetensors.index.json nor model.safetensors");
    }
    return open(single.string());
  }
  if (path.ends_with(".json")) return open_index(path);
  auto file = SafetensorsFile::open(path);
  if (!file.is_ok()) return file.status();
  SafetensorsModel model;
  model.shards_.push_back(std::move(file).value());
  for (const TensorView& t : model.shards_[0].tensors()) model.index_.emplace(t.name, Location{0, &t});
  return Result<SafetensorsModel>(std::move(model));
}

Result<SafetensorsModel> SafetensorsModel::open_index(const std::string& index_path) {
  namespace fs = std::filesystem;
  auto bytes = read_small_file(index_path, kMaxIndexBytes);
  if (!bytes.is_ok()) return bytes.status();
  const auto raw = bytes->bytes();
  auto parsed = parse_strict_json(std::string_view(reinterpret_cast<const char*>(raw.data()), raw.size()), index_path);
  if (!parsed.is_ok()) return parsed.status();
  const Json& index = *parsed;
  if (!index.is_object()) return invalid_argument(index_path + ": not a JSON object");
  const auto map_it = index.find("weight_map");
  if (map_it == index.end() || !map_it->is_object()) {
    return invalid_argument(index_path + ": missing or non-object \"weight_map\"");
  }
  const fs::path dir = fs::path(index_path).parent_path();
  SafetensorsModel model;
  std::map<std::string, size_t> shard_by_file;
  for (const auto& [name, shard_value] : map_it->items()) {
    if (!shard_value.is_string()) {
      return invalid_argument(index_path + ": weight_map entry of " + quote_name(name) + " is not a string");
    }
    const std::string shard_file = shard_value.get<std::string>();
    // Shards live next to the index; a path that leaves the directory is not a shard.
    if (shard_file.empty() || shard_file == "." || shard_file == ".." ||
        shard_file.find('/') != std::string::npos || shard_file.find('\\') != std::string::npos) {
      return invalid_argument(index_path + ": tensor " + quote_name(name) + " maps to " + quote_name(shard_file) +
                              ", which is not a file name in the index's directory");
    }
    auto [it, inserted] = shard_by_file.emplace(shard_file, model.shards_.size());
    if (inserted) {
      auto shard = SafetensorsFile::open((dir / shard_file).string());
      if (!shard.is_ok()) return shard.status().with_context(index_path);
      model.shards_.push_back(std::move(shard).value());
    }
    const TensorView* view = model.shards_[it->second].find(name);
    if (view == nullptr) {
      return not_found(index_path + ": tensor " + quote_name(name) + " is not in its shard " + quote_name(shard_file));
    }
    model.index_.emplace(name, Location{it->second, view});
  }
  if (model.index_.empty()) return invalid_argument(index_path + ": \"weight_map\" is empty");
  return Result<SafetensorsModel>(std::move(model));
}

const TensorView* SafetensorsModel::find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : it->second.view;
}

std::vector<std::string_view> SafetensorsModel::tensor_names() const {
  std::vector<std::string_view> names;
  names.reserve(index_.size());
  for (const auto& [name, location] : index_) names.push_back(name);
  return names;
}

}  // namespace tessera::loader
