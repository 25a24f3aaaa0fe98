// TokenizerSpec: everything a BPE tokenizer is, as plain data. The front ends
// (tokenizer.json, GGUF metadata) parse into it; Tokenizer::from_spec() checks it and
// builds the lookup tables. Tests may build one by hand.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "tessera/common/status.h"

namespace tessera::tokenizer {

using TokenId = int32_t;

enum class ModelKind {
  // GPT-2 style: text is split by regexes, each piece's UTF-8 bytes are mapped to printable
  // characters (bytes_to_unicode) and merged. Every byte is a token, so nothing is unknown.
  kByteLevelBpe,
  // SentencePiece style (Llama 2, Mistral): the symbols are Unicode characters, spaces are
  // "▁", and characters missing from the vocabulary fall back to <0xNN> byte tokens.
  kSentencePieceBpe,
};

enum class MergeOrder {
  kMergeRanks,   // the pair with the lowest rank in `merges` merges first (HF BPE)
  kTokenScores,  // the pair whose concatenation has the highest score merges first (GGUF "llama")
};

// GGUF's tokenizer.ggml.token_type values.
enum class TokenType : uint8_t {
  kUndefined = 0,
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,
};

// A token matched in the raw text before normalization and pre-tokenization.
struct AddedToken {
  std::string content;
  TokenId id = 0;
  bool special = true;       // skipped by skip_special_tokens; plain text when parse_special is off
  bool lstrip = false;       // the match swallows whitespace on its left
  bool rstrip = false;       // ... and on its right
  bool single_word = false;  // matches only when not inside a word
  bool normalized = false;   // recorded, but matching always runs on the raw text
};

struct NormalizerStep {
  enum class Kind { kNfc, kPrepend, kReplace };
  Kind kind = Kind::kNfc;
  std::string pattern;  // kReplace: the literal to replace
  std::string content;  // kPrepend: the prefix; kReplace: the replacement
};

enum class PrependScheme { kNever, kFirst, kAlways };

struct PreTokenizerStep {
  enum class Kind {
    kSplitRegex,  // every match and every gap between matches becomes its own piece
    kMetaspace,   // spaces -> replacement, optional prefix, optional split before each one
  };
  Kind kind = Kind::kSplitRegex;
  std::string regex;                 // kSplitRegex, PCRE2 syntax with Unicode classes
  std::string replacement = "\xE2\x96\x81";  // kMetaspace: "▁"
  PrependScheme prepend_scheme = PrependScheme::kAlways;
  bool split = false;
};

struct DecoderSpec {
  bool byte_level = false;     // map bytes_to_unicode characters back to bytes
  bool byte_fallback = false;  // <0xNN> tokens are bytes; invalid groups become U+FFFD each
  std::string metaspace;       // replaced by a space when non-empty (usually "▁")
  int num_leading_spaces_to_strip = 0;  // Strip(" ", n, 0) after fusing
};

struct TokenizerSpec {
  ModelKind model_kind = ModelKind::kByteLevelBpe;
  MergeOrder merge_order = MergeOrder::kMergeRanks;

  // Indexed by id. Byte-level vocabularies hold the bytes_to_unicode spelling.
  std::vector<std::string> vocab;
  std::vector<float> scores;            // kTokenScores only; empty otherwise
  std::vector<TokenType> token_types;   // may be empty
  std::vector<std::pair<std::string, std::string>> merges;  // kMergeRanks, in rank order

  bool ignore_merges = false;  // a piece that is itself a token is emitted whole (Llama 3)
  bool byte_fallback = false;
  bool fuse_unk = false;
  TokenId unk_id = -1;

  std::vector<NormalizerStep> normalizer;
  std::vector<PreTokenizerStep> pre_tokenizer;
  std::vector<AddedToken> added_tokens;

  // What add_special_tokens puts around the ids (post-processor / add_bos / add_eos).
  std::vector<TokenId> prefix_ids;
  std::vector<TokenId> suffix_ids;
  TokenId bos_id = -1;
  TokenId eos_id = -1;

  DecoderSpec decoder;

  [[nodiscard]] Status validate() const;
};

// Regex sets of well-known pre-tokenizers, as their tokenizer.json files spell them.
inline constexpr const char* kGpt2Regex =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
inline constexpr const char* kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
inline constexpr const char* kQwen2Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
inline constexpr const char* kDigitRegex = R"(\p{N})";

}  // namespace tessera::tokenizer
