#include "gateway/tokenizer/tokenizer.h"

#include <utf8proc.h>

#include <algorithm>
#include <cctype>
#include <cstdio>

#include "gateway/tokenizer/byte_level.h"
#include "gateway/tokenizer/tokenizer_impl.h"
#include "gateway/tokenizer/utf8.h"

namespace tessera::tokenizer {
namespace {

// The Strip decoder: drops up to num_spaces_to_strip spaces from the text appended at
// `first`; once any other text came out, nothing more is stripped.
void strip_leading_spaces(std::string& out, size_t first, int& num_spaces_to_strip) {
  size_t strip_at = first;
  while (num_spaces_to_strip > 0 && strip_at < out.size() && out[strip_at] == ' ') {
    ++strip_at;
    --num_spaces_to_strip;
  }
  out.erase(first, strip_at - first);
  if (out.size() > first) num_spaces_to_strip = 0;
}

// Rust's char::is_whitespace (the White_Space property), which HF uses for lstrip/rstrip.
bool is_whitespace(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
         cp == 0x3000;
}

bool is_word_char(uint32_t cp) {
  if (cp == '_') return true;
  const utf8proc_category_t c = utf8proc_category(static_cast<utf8proc_int32_t>(cp));
  return (c >= UTF8PROC_CATEGORY_LU && c <= UTF8PROC_CATEGORY_LO) || (c >= UTF8PROC_CATEGORY_ND && c <= UTF8PROC_CATEGORY_NO);
}

// The code point that ends just before `end` in valid UTF-8.
uint32_t code_point_before(std::string_view text, size_t end, size_t& begin) {
  begin = end - 1;
  while (begin > 0 && (static_cast<unsigned char>(text[begin]) & 0xC0) == 0x80) --begin;
  size_t pos = begin;
  return utf8::next_code_point(text, pos);
}

struct AddedMatch {
  size_t begin;  // including whitespace swallowed by lstrip
  size_t end;    // including whitespace swallowed by rstrip
  TokenId id;
};

bool in_range(TokenId id, size_t n) { return id >= 0 && static_cast<size_t>(id) < n; }

// BPE indexes a piece's symbols with int32 and normalization can triple a text (" " -> "▁",
// NFC expansions), so longer texts are refused rather than overflowing an index.
constexpr size_t kMaxTextBytes = size_t{512} << 20;

// encode() keeps its scratch buffers per thread; past these sizes they are released after
// the call, so one huge request does not leave every thread holding megabytes.
constexpr size_t kMaxRetainedNormalizedBytes = size_t{1} << 20;
constexpr size_t kMaxRetainedPieces = size_t{1} << 16;

Status invalid_utf8(std::string_view text, size_t offset) {
  std::string bytes;
  char hex[8];
  for (size_t i = offset; i < text.size() && i < offset + 4; ++i) {
    std::snprintf(hex, sizeof(hex), "%s0x%02X", i == offset ? "" : " ", static_cast<unsigned char>(text[i]));
    bytes += hex;
  }
  return invalid_argument("text to tokenize is not valid UTF-8: ill-formed sequence at byte offset " +
                          std::to_string(offset) + " (" + bytes + (text.size() > offset + 4 ? " ..." : "") + ")");
}

}  // namespace

Status TokenizerSpec::validate() const {
  if (vocab.empty()) return invalid_argument("tokenizer has an empty vocabulary");
  const size_t n = vocab.size();
  if (merge_order == MergeOrder::kTokenScores && scores.size() != n) {
    return invalid_argument("tokenizer merges by score but has " + std::to_string(scores.size()) + " scores for " +
                            std::to_string(n) + " tokens");
  }
  if (!token_types.empty() && token_types.size() != n) {
    return invalid_argument("tokenizer has " + std::to_string(token_types.size()) + " token types for " +
                            std::to_string(n) + " tokens");
  }
  for (const AddedToken& t : added_tokens) {
    if (!in_range(t.id, n)) return invalid_argument("added token '" + t.content + "' has id " + std::to_string(t.id) + " outside the vocabulary");
    if (t.content.empty()) return invalid_argument("added token " + std::to_string(t.id) + " is empty");
  }
  for (TokenId id : prefix_ids) {
    if (!in_range(id, n)) return invalid_argument("post-processor token id " + std::to_string(id) + " outside the vocabulary");
  }
  for (TokenId id : suffix_ids) {
    if (!in_range(id, n)) return invalid_argument("post-processor token id " + std::to_string(id) + " outside the vocabulary");
  }
  for (TokenId id : {bos_id, eos_id, unk_id}) {
    if (id != -1 && !in_range(id, n)) return invalid_argument("special token id " + std::to_string(id) + " outside the vocabulary");
  }
  for (const PreTokenizerStep& s : pre_tokenizer) {
    if (s.kind == PreTokenizerStep::Kind::kSplitRegex && s.regex.empty()) return invalid_argument("empty pre-tokenizer regex");
  }
  return Status::ok();
}

Result<Tokenizer> Tokenizer::from_spec(TokenizerSpec spec) {
  TESSERA_RETURN_IF_ERROR(spec.validate());
  auto impl = std::make_shared<Impl>();
  auto model = BpeModel::create(spec);
  if (!model.is_ok()) return model.status();
  impl->model = std::move(model).value();
  auto pre = PreTokenizer::create(spec.normalizer, spec.pre_tokenizer);
  if (!pre.is_ok()) return pre.status();
  impl->pre_tokenizer = std::move(pre).value();

  const size_t n = spec.vocab.size();
  impl->special.assign(n, 0);
  for (size_t i = 0; i < spec.added_tokens.size(); ++i) {
    const AddedToken& t = spec.added_tokens[i];
    impl->special[static_cast<size_t>(t.id)] = t.special ? 1 : 0;
    if (impl->added_index.emplace(t.content, static_cast<TokenId>(i)).second) {
      auto& lengths = impl->added_lengths[static_cast<unsigned char>(t.content[0])];
      if (std::find(lengths.begin(), lengths.end(), t.content.size()) == lengths.end()) {
        lengths.push_back(static_cast<uint32_t>(t.content.size()));
      }
    }
  }
  for (auto& lengths : impl->added_lengths) std::sort(lengths.rbegin(), lengths.rend());

  impl->decoded_piece.resize(n);
  impl->fallback_byte.assign(n, -1);
  const DecoderSpec& d = spec.decoder;
  for (size_t id = 0; id < n; ++id) {
    const std::string& token = spec.vocab[id];
    if (d.byte_level) {
      auto raw = ByteLevelMap::instance().decode(token);
      impl->decoded_piece[id] = raw ? std::move(*raw) : token;
      continue;
    }
    if (d.byte_fallback && token.size() == 6 && token.compare(0, 3, "<0x") == 0 && token[5] == '>' &&
        std::isxdigit(static_cast<unsigned char>(token[3])) && std::isxdigit(static_cast<unsigned char>(token[4]))) {
      impl->fallback_byte[id] = static_cast<int16_t>(std::stoi(token.substr(3, 2), nullptr, 16));
    }
    std::string text = token;
    if (!d.metaspace.empty()) {
      for (size_t pos = text.find(d.metaspace); pos != std::string::npos; pos = text.find(d.metaspace, pos + 1)) {
        text.replace(pos, d.metaspace.size(), " ");
      }
    }
    impl->decoded_piece[id] = std::move(text);
  }
  impl->spec = std::move(spec);
  return Tokenizer(std::move(impl));
}

Result<std::vector<TokenId>> Tokenizer::encode(std::string_view text, const EncodeOptions& options) const {
  if (text.size() > kMaxTextBytes) {
    return invalid_argument("text of " + std::to_string(text.size()) + " bytes is longer than the tokenizer's limit of " +
                            std::to_string(kMaxTextBytes) + " bytes");
  }
  if (const size_t valid = utf8::valid_prefix_length(text); valid != text.size()) return invalid_utf8(text, valid);
  const Impl& impl = *impl_;
  const TokenizerSpec& spec = impl.spec;
  std::vector<TokenId> out;
  out.reserve(text.size() / 3 + spec.prefix_ids.size() + spec.suffix_ids.size() + 4);
  if (options.add_special_tokens == SpecialTokens::kAdd) out.insert(out.end(), spec.prefix_ids.begin(), spec.prefix_ids.end());

  const bool parse_special = options.parse_special == SpecialTokenParsing::kParse;
  auto find_added = [&](size_t from, AddedMatch& match) -> bool {
    if (impl.added_index.empty()) return false;
    for (size_t pos = from; pos < text.size(); ++pos) {
      const auto& lengths = impl.added_lengths[static_cast<unsigned char>(text[pos])];
      for (uint32_t len : lengths) {
        if (pos + len > text.size()) continue;
        auto it = impl.added_index.find(text.substr(pos, len));
        if (it == impl.added_index.end()) continue;
        const AddedToken& t = spec.added_tokens[static_cast<size_t>(it->second)];
        if (t.special && !parse_special) continue;
        size_t begin = pos;
        size_t end = pos + len;
        if (t.single_word) {
          size_t prev_begin = 0;
          if (begin > 0 && is_word_char(code_point_before(text, begin, prev_begin))) continue;
          size_t next = end;
          if (end < text.size() && is_word_char(utf8::next_code_point(text, next))) continue;
        }
        if (t.lstrip) {
          size_t prev_begin = 0;
          while (begin > from && is_whitespace(code_point_before(text, begin, prev_begin))) begin = prev_begin;
        }
        if (t.rstrip) {
          size_t next = end;
          while (end < text.size() && is_whitespace(utf8::next_code_point(text, next))) end = next;
        }
        match = AddedMatch{begin, end, t.id};
        return true;
      }
    }
    return false;
  };

  // Buffers reused across calls on this thread; encode() stays re-entrant across threads.
  thread_local std::string normalized;
  thread_local std::vector<std::pair<size_t, size_t>> pieces;
  auto encode_segment = [&](size_t begin, size_t end) -> Status {
    if (begin >= end) return Status::ok();
    TESSERA_RETURN_IF_ERROR(impl.pre_tokenizer.run(text.substr(begin, end - begin), begin == 0, normalized, pieces));
    const std::string_view norm(normalized);
    for (const auto& [b, e] : pieces) impl.model->encode_piece(norm.substr(b, e - b), out);
    return Status::ok();
  };
  auto encode_all = [&]() -> Status {
    size_t pos = 0;
    AddedMatch match{};
    while (pos < text.size() && find_added(pos, match)) {
      TESSERA_RETURN_IF_ERROR(encode_segment(pos, match.begin));
      out.push_back(match.id);
      pos = match.end;
    }
    return encode_segment(pos, text.size());
  };
  const Status status = encode_all();
  if (normalized.capacity() > kMaxRetainedNormalizedBytes) std::string().swap(normalized);
  if (pieces.capacity() > kMaxRetainedPieces) std::vector<std::pair<size_t, size_t>>().swap(pieces);
  if (!status.is_ok()) return status;

  if (options.add_special_tokens == SpecialTokens::kAdd) out.insert(out.end(), spec.suffix_ids.begin(), spec.suffix_ids.end());
  return out;
}

void Tokenizer::Impl::feed(TokenId id, const DecodeOptions& options, std::string& held, int& num_spaces_to_strip,
                           std::string& out) const {
  if (options.special_tokens == SpecialTokenOutput::kSkip && special[static_cast<size_t>(id)]) return;
  const size_t first = out.size();
  if (spec.decoder.byte_level) {
    held += decoded_piece[static_cast<size_t>(id)];
    const size_t ready = held.size() - utf8::incomplete_tail_length(held);
    utf8::append_lossy(std::string_view(held).substr(0, ready), out);
    held.erase(0, ready);
  } else {
    const int16_t byte = fallback_byte[static_cast<size_t>(id)];
    if (byte >= 0) {
      // HF's ByteFallback judges a whole run of byte tokens at once, so the run is held
      // until a non-byte token (or the end) closes it.
      held.push_back(static_cast<char>(byte));
      return;
    }
    int no_strip = 0;
    flush(held, no_strip, out);
    out += decoded_piece[static_cast<size_t>(id)];
  }
  strip_leading_spaces(out, first, num_spaces_to_strip);
}

void Tokenizer::Impl::flush(std::string& held, int& num_spaces_to_strip, std::string& out) const {
  if (held.empty()) return;
  const size_t first = out.size();
  if (spec.decoder.byte_level) {
    utf8::append_lossy(held, out);
  } else if (utf8::is_valid(held)) {
    out += held;
  } else {
    for (size_t i = 0; i < held.size(); ++i) out += utf8::kReplacementChar;
  }
  held.clear();
  strip_leading_spaces(out, first, num_spaces_to_strip);
}

Result<std::string> Tokenizer::decode(std::span<const TokenId> ids, const DecodeOptions& options) const {
  IncrementalDecoder decoder(*this, options);
  auto text = decoder.push(ids);
  if (!text.is_ok()) return text.status();
  std::string out = std::move(text).value();
  out += decoder.finish();
  return out;
}

size_t Tokenizer::vocab_size() const { return impl_->spec.vocab.size(); }

std::optional<TokenId> Tokenizer::token_to_id(std::string_view token) const {
  const TokenIndex& index = impl_->model->token_index();
  auto it = index.find(token);
  if (it == index.end()) return std::nullopt;
  return it->second;
}

std::optional<std::string_view> Tokenizer::id_to_token(TokenId id) const {
  if (!in_range(id, impl_->spec.vocab.size())) return std::nullopt;
  return impl_->spec.vocab[static_cast<size_t>(id)];
}

std::string Tokenizer::token_bytes(TokenId id) const {
  if (!in_range(id, impl_->spec.vocab.size())) return {};
  const auto i = static_cast<size_t>(id);
  if (!impl_->spec.decoder.byte_level && impl_->fallback_byte[i] >= 0) return std::string(1, static_cast<char>(impl_->fallback_byte[i]));
  return impl_->decoded_piece[i];
}

bool Tokenizer::is_special(TokenId id) const {
  return in_range(id, impl_->special.size()) && impl_->special[static_cast<size_t>(id)] != 0;
}

std::optional<TokenId> Tokenizer::bos_id() const {
  if (impl_->spec.bos_id < 0) return std::nullopt;
  return impl_->spec.bos_id;
}

std::optional<TokenId> Tokenizer::eos_id() const {
  if (impl_->spec.eos_id < 0) return std::nullopt;
  return impl_->spec.eos_id;
}

ModelKind Tokenizer::model_kind() const { return impl_->spec.model_kind; }
const TokenizerSpec& Tokenizer::spec() const { return impl_->spec; }

IncrementalDecoder::IncrementalDecoder(const Tokenizer& tokenizer, DecodeOptions options)
    : impl_(tokenizer.impl_), options_(options), num_spaces_to_strip_(impl_->spec.decoder.num_leading_spaces_to_strip) {}

Result<std::string> IncrementalDecoder::push(TokenId id) {
  if (!in_range(id, impl_->spec.vocab.size())) return invalid_argument("token id " + std::to_string(id) + " is outside the vocabulary");
  std::string out;
  impl_->feed(id, options_, held_bytes_, num_spaces_to_strip_, out);
  return out;
}

Result<std::string> IncrementalDecoder::push(std::span<const TokenId> ids) {
  for (TokenId id : ids) {
    if (!in_range(id, impl_->spec.vocab.size())) return invalid_argument("token id " + std::to_string(id) + " is outside the vocabulary");
  }
  std::string out;
  for (TokenId id : ids) impl_->feed(id, options_, held_bytes_, num_spaces_to_strip_, out);
  return out;
}

std::string IncrementalDecoder::finish() {
  std::string out;
  impl_->flush(held_bytes_, num_spaces_to_strip_, out);
  num_spaces_to_strip_ = impl_->spec.decoder.num_leading_spaces_to_strip;
  return out;
}

}  // namespace tessera::tokenizer
