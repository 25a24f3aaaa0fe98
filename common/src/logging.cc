#include "tessera/common/logging.h"

#include <atomic>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <mutex>

namespace tessera::log {
namespace {

struct State {
  std::mutex mutex;  // guards sink and serializes writes
  Options options;
  Sink sink;
  std::atomic<int> level{static_cast<int>(Level::kInfo)};
};

State& state() {
  static State s;
  return s;
}

template <typename T>
std::string number_to_string(T value) {
  char buf[32];
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), value);
  return ec == std::errc() ? std::string(buf, end) : std::string("?");
}

void append_json_string(std::string& out, std::string_view s) {
  out += '"';
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  out += '"';
}

bool needs_quotes(std::string_view s) {
  if (s.empty()) return true;
  for (unsigned char c : s) {
    if (c <= ' ' || c == '"' || c == '=' || c == '\\') return true;
  }
  return false;
}

// RFC 3339 UTC with milliseconds: 2026-11-26T08:40:01.123Z
std::string format_time(int64_t unix_us) {
  std::time_t secs = static_cast<std::time_t>(unix_us / 1000000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
                tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>((unix_us / 1000) % 1000));
  return buf;
}

}  // namespace

Field::Field(std::string_view key, double value) : key_(key), kind_(Kind::kNumber) {
  if (value != value || value == 1.0 / 0.0 || value == -1.0 / 0.0) {
    // JSON has no spelling for these; keep them readable and valid as strings.
    value_ = value != value ? "NaN" : (value > 0 ? "+Inf" : "-Inf");
    kind_ = Kind::kString;
  } else {
    value_ = number_to_string(value);
  }
}

std::string_view level_name(Level level) {
  switch (level) {
    case Level::kTrace: return "trace";
    case Level::kDebug: return "debug";
    case Level::kInfo: return "info";
    case Level::kWarn: return "warn";
    case Level::kError: return "error";
    case Level::kOff: return "off";
  }
  return "?";
}

Result<Level> parse_level(std::string_view text) {
  for (Level l : {Level::kTrace, Level::kDebug, Level::kInfo, Level::kWarn, Level::kError, Level::kOff}) {
    if (text == level_name(l)) return l;
  }
  return invalid_argument("unknown log level '" + std::string(text) + "' (expected trace, debug, info, warn, error or off)");
}

Result<Format> parse_format(std::string_view text) {
  if (text == "text") return Format::kText;
  if (text == "json") return Format::kJson;
  return invalid_argument("unknown log format '" + std::string(text) + "' (expected text or json)");
}

void configure(const Options& options) {
  State& s = state();
  std::lock_guard lock(s.mutex);
  s.options = options;
  s.level.store(static_cast<int>(options.level), std::memory_order_relaxed);
}

const Options& options() { return state().options; }

void set_sink(Sink sink) {
  State& s = state();
  std::lock_guard lock(s.mutex);
  s.sink = std::move(sink);
}

bool enabled(Level level) {
  return level != Level::kOff && static_cast<int>(level) >= state().level.load(std::memory_order_relaxed);
}

std::string format_line(Level level, std::string_view message, std::initializer_list<Field> fields,
                        const Options& options, int64_t unix_us) {
  std::string line;
  line.reserve(96 + message.size());
  if (options.format == Format::kJson) {
    line += "{\"ts\":";
    append_json_string(line, format_time(unix_us));
    line += ",\"level\":";
    append_json_string(line, level_name(level));
    line += ",\"component\":";
    append_json_string(line, options.component);
    line += ",\"msg\":";
    append_json_string(line, message);
    for (const Field& f : fields) {
      line += ',';
      append_json_string(line, f.key());
      line += ':';
      if (f.kind() == Field::Kind::kString) {
        append_json_string(line, f.value());
      } else {
        line += f.value();
      }
    }
    line += '}';
  } else {
    line += format_time(unix_us);
    line += ' ';
    std::string_view name = level_name(level);
    line += name;
    line.append(6 - name.size(), ' ');
    line += options.component;
    line += ": ";
    line += message;
    for (const Field& f : fields) {
      line += ' ';
      line += f.key();
      line += '=';
      if (f.kind() == Field::Kind::kString && needs_quotes(f.value())) {
        append_json_string(line, f.value());
      } else {
        line += f.value();
      }
    }
  }
  return line;
}

void write(Level level, std::string_view message, std::initializer_list<Field> fields) {
  if (!enabled(level)) return;
  int64_t now_us = std::chrono::duration_cast<std::chrono::microseconds>(
                       std::chrono::system_clock::now().time_since_epoch())
                       .count();
  State& s = state();
  std::lock_guard lock(s.mutex);
  std::string line = format_line(level, message, fields, s.options, now_us);
  if (s.sink) {
    s.sink(line);
  } else {
    line += '\n';
    std::fwrite(line.data(), 1, line.size(), stderr);
  }
}

}  // namespace tessera::log
