// Helpers for the loader's error messages (internal to worker/loader).
#pragma once

#include <algorithm>
#include <string>
#include <string_view>

namespace tessera::loader {

// 'name' for an error message. Names read from a corrupt file can be long or binary:
// control characters become '?' and anything past 80 bytes becomes "...".
inline std::string quote_name(std::string_view s) {
  std::string out = "'";
  const size_t n = std::min<size_t>(s.size(), 80);
  for (size_t i = 0; i < n; ++i) {
    const char c = s[i];
    out.push_back(static_cast<unsigned char>(c) < 0x20 || c == 0x7f ? '?' : c);
  }
  if (n < s.size()) out += "...";
  out += "'";
  return out;
}

}  // namespace tessera::loader
