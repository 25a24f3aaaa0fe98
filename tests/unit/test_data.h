// Where the unit tests find downloaded test data: the test model (scripts/fetch-model) and
// the vocabulary GGUFs (scripts/fetch-test-vocabs). scripts/test sets the environment
// variables; run by hand, the defaults are the scripts' own cache directory.
#pragma once

#include <cstdlib>
#include <string>

namespace tessera::testing {

// $TESSERA_MODEL_CACHE, else ~/.cache/tessera/models.
inline std::string model_cache_dir() {
  if (const char* env = std::getenv("TESSERA_MODEL_CACHE"); env != nullptr && *env != '\0') return env;
  const char* home = std::getenv("HOME");
  return std::string(home != nullptr ? home : "") + "/.cache/tessera/models";
}

// $TESSERA_TEST_MODEL, else the cache's SmolLM2-135M-Instruct.Q4_1.gguf.
inline std::string test_model_path() {
  if (const char* env = std::getenv("TESSERA_TEST_MODEL"); env != nullptr && *env != '\0') return env;
  return model_cache_dir() + "/SmolLM2-135M-Instruct.Q4_1.gguf";
}

// $TESSERA_TEST_VOCAB_DIR, else the cache's vocabs/.
inline std::string vocab_dir() {
  if (const char* env = std::getenv("TESSERA_TEST_VOCAB_DIR"); env != nullptr && *env != '\0') return env;
  return model_cache_dir() + "/vocabs";
}

// $TESSERA_FIXTURES_DIR (a copy of tests/fixtures elsewhere, e.g. on the GPU host), else
// the source tree's, compiled in as `compiled_default`.
inline std::string fixtures_dir(const char* compiled_default) {
  if (const char* env = std::getenv("TESSERA_FIXTURES_DIR"); env != nullptr && *env != '\0') return env;
  return compiled_default;
}

}  // namespace tessera::testing
