// Fixture loading shared by the tokenizer tests: where the fixtures, vocab GGUFs and the
// test model live, and each reference tokenizer by name.
#pragma once

#include <cstdlib>
#include <fstream>
#include <iterator>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "gateway/tokenizer/tokenizer.h"
#include "test_data.h"
#include "worker/loader/gguf_file.h"

namespace tessera::tokenizer::testing {

using tessera::testing::test_model_path;
using tessera::testing::vocab_dir;

inline std::string fixture_path(const std::string& name) {
  return std::string(TESSERA_SOURCE_DIR) + "/tests/fixtures/tokenizer/" + name;
}

inline nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("missing fixture " + path + " (run scripts/fixtures/make_tokenizer_fixtures.py)");
  return nlohmann::json::parse(std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()));
}

inline const std::vector<std::string>& reference_names() {
  static const std::vector<std::string> kNames = {"spm_small", "spm_metaspace", "bytelevel_small", "smollm2",
                                                  "llama-spm", "llama-bpe", "qwen2"};
  return kNames;
}

// Loads a reference tokenizer; throws with a message naming the missing file and the
// script that fetches it, so a missing download fails the test instead of skipping it.
inline Tokenizer load_reference(const std::string& name) {
  Result<Tokenizer> t = invalid_argument("unknown reference tokenizer " + name);
  if (name == "spm_small" || name == "bytelevel_small") {
    t = Tokenizer::from_tokenizer_json_file(fixture_path(name + ".tokenizer.json"));
  } else if (name == "spm_metaspace") {
    // The same edit as the fixture script's metaspace_edits().
    nlohmann::json spec = read_json(fixture_path("spm_small.tokenizer.json"));
    spec["normalizer"] = nullptr;
    spec["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "\xE2\x96\x81"}, {"prepend_scheme", "first"}, {"split", false}};
    t = Tokenizer::from_tokenizer_json(spec.dump());
  } else {
    const std::string path = name == "smollm2" ? test_model_path() : vocab_dir() + "/ggml-vocab-" + name + ".gguf";
    auto gguf = loader::GgufFile::open(path);
    if (!gguf.is_ok()) {
      throw std::runtime_error(gguf.status().to_string() + " (run scripts/fetch-model and scripts/fetch-test-vocabs, "
                               "or set TESSERA_TEST_MODEL / TESSERA_TEST_VOCAB_DIR)");
    }
    t = Tokenizer::from_gguf(*gguf);
  }
  if (!t.is_ok()) throw std::runtime_error(name + ": " + t.status().to_string());
  return std::move(t).value();
}

// load_reference(), loaded once per test binary.
inline const Tokenizer& cached_reference(const std::string& name) {
  static std::map<std::string, Tokenizer> cache;
  auto it = cache.find(name);
  if (it == cache.end()) it = cache.emplace(name, load_reference(name)).first;
  return it->second;
}

}  // namespace tessera::tokenizer::testing
