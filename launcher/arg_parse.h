// Number and list parsing for the subcommands' options.
#pragma once

#include <charconv>
#include <optional>
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

// Walks a subcommand's options in turn (args[0], the command's name, is skipped): the value
// after a flag, numbers. The first problem is kept and ends the walk.
class OptionReader {
 public:
  explicit OptionReader(const std::vector<std::string>& args) : args_(args) {}

  // Moves to the next option; false at the end, or once there is an error.
  bool next() { return error_.empty() && ++i_ < args_.size(); }
  const std::string& option() const { return args_[i_]; }
  // Consumes the value after the current option; nullopt (and an error) when there is none.
  std::optional<std::string> value() {
    if (i_ + 1 >= args_.size()) {
      fail(option() + " needs a value");
      return std::nullopt;
    }
    return args_[++i_];
  }
  template <typename T>
  void number(T* out) {
    auto v = value();
    if (v && !parse_number(*v, out)) fail(option_before_value() + ": '" + *v + "' is not a valid number");
  }
  template <typename T>
  void number(std::optional<T>* out) {
    T n{};
    const size_t before = i_;
    number(&n);
    if (error_.empty() && i_ != before) *out = n;
  }
  void fail(std::string message) {
    if (error_.empty()) error_ = std::move(message);
  }
  const std::string& error() const { return error_; }

 private:
  const std::string& option_before_value() const { return args_[i_ - 1]; }
  const std::vector<std::string>& args_;
  size_t i_ = 0;
  std::string error_;
};

}  // namespace tessera::launcher
