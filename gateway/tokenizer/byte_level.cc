#include "gateway/tokenizer/byte_level.h"

#include "gateway/tokenizer/utf8.h"

namespace tessera::tokenizer {

const ByteLevelMap& ByteLevelMap::instance() {
  static const ByteLevelMap kMap;
  return kMap;
}

ByteLevelMap::ByteLevelMap() {
  byte_of_code_point_.fill(-1);
  // Printable Latin-1 bytes stand for themselves; the other 68 bytes take the code points
  // from 256 upwards, in byte order.
  auto printable = [](int b) { return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF); };
  int next_extra = 256;
  for (int b = 0; b < 256; ++b) {
    const int cp = printable(b) ? b : next_extra++;
    utf8::append_code_point(static_cast<uint32_t>(cp), encoded_[static_cast<size_t>(b)]);
    byte_of_code_point_[static_cast<size_t>(cp)] = static_cast<int16_t>(b);
  }
}

std::optional<std::string> ByteLevelMap::decode(std::string_view token) const {
  // Vocabulary strings come from model files; next_code_point() needs valid UTF-8.
  if (!utf8::is_valid(token)) return std::nullopt;
  std::string out;
  out.reserve(token.size());
  size_t pos = 0;
  while (pos < token.size()) {
    const uint32_t cp = utf8::next_code_point(token, pos);
    if (cp >= byte_of_code_point_.size() || byte_of_code_point_[cp] < 0) return std::nullopt;
    out.push_back(static_cast<char>(byte_of_code_point_[cp]));
  }
  return out;
}

}  // namespace tessera::tokenizer
