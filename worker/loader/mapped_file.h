// Read-only bytes of a model file: either the file mapped into memory or a buffer the
// caller handed over (tests, fuzzing). Readers keep views into these bytes, so the
// address of the data must not change while the object lives, including across moves.
#pragma once

#include <cstddef>
#include <span>
#include <string>
#include <vector>

#include "tessera/common/status.h"

namespace tessera::loader {

class FileBytes {
 public:
  FileBytes() = default;
  ~FileBytes();
  FileBytes(FileBytes&& other) noexcept;
  FileBytes& operator=(FileBytes&& other) noexcept;
  FileBytes(const FileBytes&) = delete;
  FileBytes& operator=(const FileBytes&) = delete;

  // Maps the whole file read-only. Fails on a missing, unreadable, empty or non-regular file.
  [[nodiscard]] static Result<FileBytes> map(const std::string& path);
  // Takes ownership of the buffer; its heap block does not move afterwards.
  static FileBytes from_buffer(std::vector<std::byte> buffer);
  // Refers to bytes the caller owns and keeps alive and unchanged while this object
  // (and any reader built on it) lives.
  static FileBytes borrow(std::span<const std::byte> bytes);

  std::span<const std::byte> bytes() const { return {data_, size_}; }
  size_t size() const { return size_; }

 private:
  void release();

  const std::byte* data_ = nullptr;
  size_t size_ = 0;
  bool mapped_ = false;  // data_ came from mmap and is unmapped on destruction
  std::vector<std::byte> buffer_;
};

}  // namespace tessera::loader
