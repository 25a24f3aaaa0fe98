// Tokenizer: exact byte-level BPE (GPT-2, Llama 3, Qwen2, SmolLM2) and SentencePiece-style
// BPE with byte fallback (Llama 2, Mistral), loaded from tokenizer.json or GGUF metadata.
// Checked token for token against Hugging Face `tokenizers` (tests/fixtures/tokenizer).
//
// encode: added/special tokens are matched in the raw text first; each segment between
// them is normalized, split by the pre-tokenizer and merged by BPE; the post-processor's
// prefix/suffix (BOS/EOS) is added on request.
//
// Immutable after construction (apart from an internal, locked word cache): any thread may
// call encode() and decode(). Copies share the tables.
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "gateway/tokenizer/tokenizer_spec.h"
#include "tessera/common/status.h"

namespace tessera::loader {
class GgufFile;
}

namespace tessera::tokenizer {

enum class SpecialTokens {
  kAdd,   // put the post-processor's prefix/suffix (BOS/EOS) around the ids
  kNone,
};

enum class SpecialTokenParsing {
  kParse,   // special tokens written in the text become their ids
  kAsText,  // they are tokenized like any other text (for untrusted user input)
};

// Defaults follow HF (`tokenizer(text)`): BOS/EOS added, special tokens parsed. A prompt
// rendered by a chat template that already holds BOS wants SpecialTokens::kNone.
struct EncodeOptions {
  SpecialTokens add_special_tokens = SpecialTokens::kAdd;
  SpecialTokenParsing parse_special = SpecialTokenParsing::kParse;
};

enum class SpecialTokenOutput { kKeep, kSkip };

struct DecodeOptions {
  SpecialTokenOutput special_tokens = SpecialTokenOutput::kKeep;
};

class Tokenizer {
 public:
  [[nodiscard]] static Result<Tokenizer> from_spec(TokenizerSpec spec);
  // A Hugging Face tokenizer.json, from a file or from its text.
  [[nodiscard]] static Result<Tokenizer> from_tokenizer_json_file(const std::filesystem::path& path);
  [[nodiscard]] static Result<Tokenizer> from_tokenizer_json(std::string_view json_text);
  // tokenizer.ggml.* metadata of a GGUF file.
  [[nodiscard]] static Result<Tokenizer> from_gguf(const loader::GgufFile& gguf);

  // text must be valid UTF-8 (INVALID_ARGUMENT naming the offset of the first ill-formed
  // byte otherwise; NUL is a character like any other) and at most 512 MiB.
  // RESOURCE_EXHAUSTED when a pre-tokenizer regex hits a PCRE2 limit on this text, which
  // the shipped patterns do not; no partial or approximate ids are ever returned.
  [[nodiscard]] Result<std::vector<TokenId>> encode(std::string_view text, const EncodeOptions& options = {}) const;

  // Ids outside the vocabulary are INVALID_ARGUMENT. Bytes that do not form valid UTF-8
  // come out as U+FFFD, exactly as HF's decoders produce them.
  [[nodiscard]] Result<std::string> decode(std::span<const TokenId> ids, const DecodeOptions& options = {}) const;

  size_t vocab_size() const;
  std::optional<TokenId> token_to_id(std::string_view token) const;
  // The token's spelling in the vocabulary (byte-level spelling for byte-level models).
  std::optional<std::string_view> id_to_token(TokenId id) const;
  // The raw bytes the token stands for, as decoding would emit them before UTF-8 repair: a
  // byte-level or byte-fallback token may hold part of a character (OpenAI logprob `bytes`).
  // Empty outside the vocabulary.
  std::string token_bytes(TokenId id) const;
  bool is_special(TokenId id) const;
  std::optional<TokenId> bos_id() const;
  std::optional<TokenId> eos_id() const;
  ModelKind model_kind() const;
  const TokenizerSpec& spec() const;

 private:
  friend class IncrementalDecoder;
  struct Impl;
  explicit Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
};

// Streaming detokenization: feed ids as they are sampled, get back only text that can no
// longer change — never half a UTF-8 sequence, never a byte group that a later byte token
// could still complete. The concatenation of everything push() and finish() return equals
// decode() of all ids. One instance per stream; not thread-safe.
class IncrementalDecoder {
 public:
  explicit IncrementalDecoder(const Tokenizer& tokenizer, DecodeOptions options = {});

  // The text that became final with these ids (often empty). An id outside the vocabulary
  // is INVALID_ARGUMENT and leaves the decoder as it was.
  [[nodiscard]] Result<std::string> push(TokenId id);
  [[nodiscard]] Result<std::string> push(std::span<const TokenId> ids);
  // Releases what is still held (as U+FFFD where it never completed) and resets.
  std::string finish();

 private:
  std::shared_ptr<const Tokenizer::Impl> impl_;
  DecodeOptions options_;
  std::string held_bytes_;  // byte-level: an unfinished UTF-8 tail; SentencePiece: a <0xNN> run
  int num_spaces_to_strip_ = 0;  // leading spaces the decoder still strips (Strip decoder)
};

}  // namespace tessera::tokenizer
