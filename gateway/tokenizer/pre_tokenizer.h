// Normalization and pre-tokenization: turn one segment of text (between added tokens) into
// the pieces BPE merges within. PCRE2 (JIT) runs the split regexes, utf8proc does NFC.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "gateway/tokenizer/tokenizer_spec.h"
#include "tessera/common/status.h"

namespace tessera::tokenizer {

// A compiled Split pattern. Immutable; any thread may call split().
class SplitRegex {
 public:
  [[nodiscard]] static Result<std::shared_ptr<const SplitRegex>> compile(const std::string& pattern);
  ~SplitRegex();
  SplitRegex(const SplitRegex&) = delete;
  SplitRegex& operator=(const SplitRegex&) = delete;

  // Appends to `out` the matches and the gaps between them (HF "Isolated" behaviour), as
  // [begin, end) offsets into text, shifted by `base`. text must be valid UTF-8.
  // RESOURCE_EXHAUSTED when PCRE2 gives up (match limit, JIT stack, heap limit): the text
  // is then not split at all, rather than split wrongly.
  [[nodiscard]] Status split(std::string_view text, size_t base, std::vector<std::pair<size_t, size_t>>& out) const;

 private:
  SplitRegex() = default;
  void* code_ = nullptr;  // pcre2_code_8*
  std::string pattern_;   // for error messages
};

// Normalizer and pre-tokenizer steps of a spec, compiled. Immutable and thread-safe.
class PreTokenizer {
 public:
  [[nodiscard]] static Result<PreTokenizer> create(const std::vector<NormalizerStep>& normalizer,
                                                   const std::vector<PreTokenizerStep>& pre_tokenizer);

  // Normalizes segment into `normalized` and appends the pieces, as [begin, end) offsets
  // into `normalized`. at_text_start: the segment starts the input (for PrependScheme::kFirst).
  // Fails only when a split regex hits a PCRE2 limit (see SplitRegex::split).
  [[nodiscard]] Status run(std::string_view segment, bool at_text_start, std::string& normalized,
           std::vector<std::pair<size_t, size_t>>& pieces) const;

 private:
  struct Step {
    PreTokenizerStep spec;
    std::shared_ptr<const SplitRegex> regex;
  };
  std::vector<NormalizerStep> normalizer_;
  std::vector<Step> steps_;
};

}  // namespace tessera::tokenizer
