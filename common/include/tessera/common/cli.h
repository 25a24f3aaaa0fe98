// Command-line helpers shared by the tier binaries and the `tessera` launcher.
#pragma once

#include <signal.h>

#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "tessera/common/config.h"

#include "tessera/common/status.h"

namespace tessera::cli {

// "tessera-router 0.1.0 (abc1234)"
std::string version_line(std::string_view program);

// Arguments after argv[0], as strings.
std::vector<std::string> args_of(int argc, char** argv);

// Handles `--help`/`-h` (prints `help`) and `--version` (prints version_line). Returns the
// exit code when one of them was given, nothing otherwise.
std::optional<int> handle_help_and_version(const std::vector<std::string>& args, std::string_view program,
                                           std::string_view help);

// Prints "WHO: message" of a failure to stderr; returns the failure exit code (1). WHO is
// the program, or the program and its command ("tessera generate").
int fail(std::string_view who, const Status& status);

// Prints "PROGRAM: message" and a hint to stderr; returns the usage-error exit code (2).
int usage_error(std::string_view program, std::string_view message);

// The configuration a tier's arguments name (--config FILE, --set KEY=VALUE), or, printed
// already, the exit code of why there is none (2: a usage error, 1: a bad configuration).
std::variant<Config, int> load_tier_config(const std::vector<std::string>& args, std::string_view program);

// SIGTERM and SIGINT, blocked in the thread that constructs this and in every thread it
// starts afterwards (construct it first in main), so that one thread takes them in turn.
class StopSignals {
 public:
  StopSignals();
  // Blocks until one arrives; returns it.
  int wait() const;
  // Blocks until one arrives (true) or the timeout passes (false).
  bool wait_for(std::chrono::seconds timeout) const;

 private:
  sigset_t set_;
};

}  // namespace tessera::cli
