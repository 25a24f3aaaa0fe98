#include "worker/loader/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

namespace tessera::loader {
namespace {

std::string errno_text(int err) { return std::strerror(err); }

}  // namespace

FileBytes::~FileBytes() { release(); }

FileBytes::FileBytes(FileBytes&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      mapped_(std::exchange(other.mapped_, false)),
      buffer_(std::move(other.buffer_)) {}

FileBytes& FileBytes::operator=(FileBytes&& other) noexcept {
  if (this != &other) {
    release();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    mapped_ = std::exchange(other.mapped_, false);
    buffer_ = std::move(other.buffer_);
  }
  return *this;
}

void FileBytes::release() {
  if (mapped_ && data_ != nullptr) {
    munmap(const_cast<std::byte*>(data_), size_);
  }
  data_ = nullptr;
  size_ = 0;
  mapped_ = false;
  buffer_.clear();
}

Result<FileBytes> FileBytes::map(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    Status status(err == ENOENT ? StatusCode::kNotFound : StatusCode::kFailedPrecondition,
                  "cannot open " + path + ": " + errno_text(err));
    return status;
  }
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return failed_precondition("cannot stat " + path + ": " + errno_text(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return failed_precondition(path + " is not a regular file");
  }
  if (st.st_size == 0) {
    ::close(fd);
    return invalid_argument(path + " is empty");
  }
  const auto size = static_cast<size_t>(st.st_size);
  void* addr = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int err = errno;
  // The mapping keeps the file alive; the descriptor is no longer needed.
  ::close(fd);
  if (addr == MAP_FAILED) {
    return failed_precondition("cannot mmap " + path + ": " + errno_text(err));
  }
  FileBytes file;
  file.data_ = static_cast<const std::byte*>(addr);
  file.size_ = size;
  file.mapped_ = true;
  return file;
}

FileBytes FileBytes::from_buffer(std::vector<std::byte> buffer) {
  FileBytes file;
  file.buffer_ = std::move(buffer);
  file.data_ = file.buffer_.data();
  file.size_ = file.buffer_.size();
  return file;
}

FileBytes FileBytes::borrow(std::span<const std::byte> bytes) {
  FileBytes file;
  file.data_ = bytes.data();
  file.size_ = bytes.size();
  return file;
}

}  // namespace tessera::loader
