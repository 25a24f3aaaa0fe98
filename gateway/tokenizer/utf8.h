// UTF-8 helpers shared by encode and decode.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace tessera::tokenizer::utf8 {

// Length of the sequence a lead byte starts, 1 for bytes that cannot start one.
inline size_t sequence_length(unsigned char lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) return 2;
  if (lead >= 0xE0 && lead <= 0xEF) return 3;
  if (lead >= 0xF0 && lead <= 0xF4) return 4;
  return 1;
}

bool is_valid(std::string_view bytes);

// Length of the longest valid prefix: bytes.size() when all of it is valid, else the offset
// of the first ill-formed sequence.
size_t valid_prefix_length(std::string_view bytes);

// Appends bytes as text, each maximal ill-formed subsequence replaced by one U+FFFD: the
// "substitution of maximal subparts" that Rust's from_utf8_lossy (and so HF) applies.
void append_lossy(std::string_view bytes, std::string& out);

// Number of trailing bytes that form a well-formed but unfinished sequence (0 to 3): the
// bytes a streaming decoder must hold back because the next token may complete them.
size_t incomplete_tail_length(std::string_view bytes);

void append_code_point(uint32_t cp, std::string& out);

// Decodes the code point at bytes[pos] of valid UTF-8 and advances pos.
uint32_t next_code_point(std::string_view bytes, size_t& pos);

inline constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";

}  // namespace tessera::tokenizer::utf8
