// GPT-2's reversible byte <-> printable-character mapping ("bytes_to_unicode"): byte-level
// vocabularies spell every byte as one visible character, so a token string never holds a
// space, a control character or a broken UTF-8 sequence.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace tessera::tokenizer {

class ByteLevelMap {
 public:
  static const ByteLevelMap& instance();

  // The character (as UTF-8) that stands for a byte.
  std::string_view encode(unsigned char byte) const { return encoded_[byte]; }

  // The raw bytes a byte-level token spells, or nullopt if a character is outside the map
  // (then HF's decoder keeps the token's UTF-8 as is).
  std::optional<std::string> decode(std::string_view token) const;

 private:
  ByteLevelMap();

  std::array<std::string, 256> encoded_;
  std::array<int16_t, 324> byte_of_code_point_{};  // code points < 324 cover the whole map; -1 = none
};

}  // namespace tessera::tokenizer
