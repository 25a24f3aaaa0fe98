// Structured logging: one line per event, a message plus key=value fields, as text for
// people or JSON lines for log pipelines. Any thread may log; a line is written with one
// call so lines from different threads never interleave.
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <string>
#include <string_view>
#include <type_traits>

#include "tessera/common/status.h"

namespace tessera::log {

enum class Level { kTrace, kDebug, kInfo, kWarn, kError, kOff };
enum class Format { kText, kJson };

std::string_view level_name(Level level);
Result<Level> parse_level(std::string_view text);
Result<Format> parse_format(std::string_view text);

// One structured field. Numbers and booleans are written bare; strings are quoted
// (text format: only when they contain spaces, quotes or '=').
class Field {
 public:
  enum class Kind { kString, kNumber, kBool };
  Field(std::string_view key, std::string_view value) : key_(key), value_(value), kind_(Kind::kString) {}
  Field(std::string_view key, const char* value) : Field(key, std::string_view(value)) {}
  Field(std::string_view key, const std::string& value) : Field(key, std::string_view(value)) {}
  Field(std::string_view key, bool value) : key_(key), value_(value ? "true" : "false"), kind_(Kind::kBool) {}
  template <typename Int>
    requires std::is_integral_v<Int> && (!std::is_same_v<Int, bool>)
  Field(std::string_view key, Int value) : key_(key), value_(std::to_string(value)), kind_(Kind::kNumber) {}
  Field(std::string_view key, double value);
  Field(std::string_view key, const Status& status) : Field(key, status.to_string()) {}

  std::string_view key() const { return key_; }
  std::string_view value() const { return value_; }
  Kind kind() const { return kind_; }

 private:
  std::string key_;
  std::string value_;
  Kind kind_;
};

struct Options {
  Level level = Level::kInfo;
  Format format = Format::kText;
  // Which process is logging ("gateway", "router", "worker/0"); a field of every line.
  std::string component = "tessera";
};

// Sets the process-wide options. Call once at start-up, before other threads log.
void configure(const Options& options);
const Options& options();

// Where finished lines go (stderr by default). Tests install a capturing sink.
using Sink = std::function<void(std::string_view line)>;
void set_sink(Sink sink);

bool enabled(Level level);
void write(Level level, std::string_view message, std::initializer_list<Field> fields = {});

// Formats a line without writing it (the unit tests check both formats through this).
std::string format_line(Level level, std::string_view message, std::initializer_list<Field> fields,
                        const Options& options, int64_t unix_us);

inline void trace(std::string_view m, std::initializer_list<Field> f = {}) { write(Level::kTrace, m, f); }
inline void debug(std::string_view m, std::initializer_list<Field> f = {}) { write(Level::kDebug, m, f); }
inline void info(std::string_view m, std::initializer_list<Field> f = {}) { write(Level::kInfo, m, f); }
inline void warn(std::string_view m, std::initializer_list<Field> f = {}) { write(Level::kWarn, m, f); }
inline void error(std::string_view m, std::initializer_list<Field> f = {}) { write(Level::kError, m, f); }

}  // namespace tessera::log
