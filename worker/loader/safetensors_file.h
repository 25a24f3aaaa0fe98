// Hugging Face safetensors checkpoints: one file, or a sharded model described by
// model.safetensors.index.json. https://huggingface.co/docs/safetensors
//
// Layout: an 8-byte little-endian header length N, N bytes of JSON
//   {"__metadata__": {"k": "v"}, "name": {"dtype": "F16", "shape": [..],
//    "data_offsets": [begin, end]}, ...}
// then the data section; offsets are relative to its start. Parsing checks every tensor's
// range against the data section and against the others (no overlaps), so tensor views
// can be used without further checks. Immutable after open(); const accessors are
// thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "tessera/common/status.h"
#include "worker/loader/mapped_file.h"
#include "worker/loader/tensor_view.h"

namespace tessera::loader {

class SafetensorsFile {
 public:
  // The format's own bound on the JSON header (safetensors' MAX_HEADER_SIZE).
  static constexpr uint64_t kMaxHeaderBytes = 100'000'000;

  // Errors are prefixed with the path.
  [[nodiscard]] static Result<SafetensorsFile> open(const std::string& path);
  [[nodiscard]] static Result<SafetensorsFile> from_buffer(std::vector<std::byte> buffer);

  SafetensorsFile(SafetensorsFile&&) noexcept = default;
  SafetensorsFile& operator=(SafetensorsFile&&) noexcept = default;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  // The "__metadata__" string map (empty when absent).
  const std::map<std::string, std::string, std::less<>>& metadata() const { return metadata_; }
  // Every tensor, ordered by position in the data section.
  const std::vector<TensorView>& tensors() const { return tensors_; }
  const TensorView* find(std::string_view name) const;
  uint64_t data_offset() const { return data_offset_; }

 private:
  SafetensorsFile() = default;
  [[nodiscard]] Status parse_guarded();
  [[nodiscard]] Status parse();

  FileBytes bytes_;
  uint64_t data_offset_ = 0;
  std::map<std::string, std::string, std::less<>> metadata_;
  std::vector<TensorView> tensors_;
  std::map<std::string, size_t, std::less<>> index_;
};

// All tensors of a checkpoint, opened from
//  - a directory holding model.safetensors.index.json (every shard it names is opened
//    once), or else model.safetensors;
//  - an index file itself; or
//  - a single .safetensors file.
class SafetensorsModel {
 public:
  static constexpr uint64_t kMaxIndexBytes = 64u << 20;

  [[nodiscard]] static Result<SafetensorsModel> open(const std::string& path);

  SafetensorsModel(SafetensorsModel&&) noexcept = default;
  SafetensorsModel& operator=(SafetensorsModel&&) noexcept = default;

  const TensorView* find(std::string_view name) const;
  // Names of every tensor, sorted.
  std::vector<std::string_view> tensor_names() const;
  size_t num_tensors() const { return index_.size(); }
  size_t num_shards() const { return shards_.size(); }
  const SafetensorsFile& shard(size_t i) const { return shards_[i]; }

 private:
  SafetensorsModel() = default;
  [[nodiscard]] static Result<SafetensorsModel> open_index(const std::string& index_path);

  struct Location {
    size_t shard = 0;
    const TensorView* view = nullptr;  // into shards_[shard]; stable because views live
                                       // in the shard's heap-allocated tensor vector
  };
  std::vector<SafetensorsFile> shards_;
  std::map<std::string, Location, std::less<>> index_;
};

}  // namespace tessera::loader
