// Where the loader tests find the real test model and the fixtures.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "test_data.h"

namespace tessera::loader::testing {

using tessera::testing::test_model_path;

inline std::string fixture_path(const std::string& name) {
  return std::string(TESSERA_SOURCE_DIR) + "/tests/fixtures/gguf/" + name;
}

inline std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// The first max_bytes bytes of a file.
inline std::vector<std::byte> read_prefix(const std::string& path, size_t max_bytes) {
  std::ifstream in(path, std::ios::binary);
  std::vector<std::byte> out(max_bytes);
  in.read(reinterpret_cast<char*>(out.data()), static_cast<std::streamsize>(max_bytes));
  out.resize(static_cast<size_t>(in.gcount()));
  return out;
}

}  // namespace tessera::loader::testing
