// Number and list parsing for the subcommands' options.
#pragma once

#include <charconv>
#include <string>
#include <type_traits>
#include <vector>

namespace tessera::launcher {

template <typename T>
bool parse_number(const std::string& s, T* out) {
  if constexpr (std::is_floating_point_v<T>) {
    try {
      size_t used = 0;
      const double v = std::stod(s, &used);
      if (used != s.size()) return false;
      *out = static_cast<T>(v);
      return true;
    } catch (...) {
      return false;
    }
  } else {
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
    return ec == std::errc() && p == s.data() + s.size();
  }
}

// "1,4,16" → {1, 4, 16}; false on an empty or malformed list.
template <typename T>
bool parse_list(const std::string& s, std::vector<T>* out) {
  out->clear();
  size_t start = 0;
  while (start <= s.size()) {
    const size_t comma = std::min(s.find(',', start), s.size());
    T v{};
    if (!parse_number(s.substr(start, comma - start), &v)) return false;
    out->push_back(v);
    start = comma + 1;
  }
  return !out->empty();
}

}  // namespace tessera::launcher
