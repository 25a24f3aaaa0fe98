#include "tessera/common/cli.h"

#include <pthread.h>

#include <cstdio>

#include "tessera/common/version.h"

namespace tessera::cli {

std::string version_line(std::string_view program) {
  std::string s(program);
  s += ' ';
  s += version();
  s += " (";
  s += git_describe();
  s += ')';
  return s;
}

std::vector<std::string> args_of(int argc, char** argv) { return {argv + (argc > 0 ? 1 : 0), argv + argc}; }

std::optional<int> handle_help_and_version(const std::vector<std::string>& args, std::string_view program,
                                           std::string_view help) {
  for (const auto& a : args) {
    if (a == "--help" || a == "-h") {
      std::fwrite(help.data(), 1, help.size(), stdout);
      return 0;
    }
    if (a == "--version") {
      std::printf("%s\n", version_line(program).c_str());
      return 0;
    }
  }
  return std::nullopt;
}

int fail(std::string_view who, const Status& status) {
  std::fprintf(stderr, "%.*s: %s\n", static_cast<int>(who.size()), who.data(), status.message().c_str());
  return 1;
}

int usage_error(std::string_view program, std::string_view message) {
  std::fprintf(stderr, "%.*s: %.*s\nTry '%.*s --help'.\n", static_cast<int>(program.size()), program.data(),
               static_cast<int>(message.size()), message.data(), static_cast<int>(program.size()), program.data());
  return 2;
}

std::variant<Config, int> load_tier_config(const std::vector<std::string>& args, std::string_view program) {
  auto sources = parse_config_flags(args);
  if (!sources) return usage_error(program, sources.status().message());
  auto config = load_config(*sources);
  if (!config) return fail(program, config.status());
  return std::move(*config);
}

StopSignals::StopSignals() {
  sigemptyset(&set_);
  sigaddset(&set_, SIGTERM);
  sigaddset(&set_, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set_, nullptr);
}

int StopSignals::wait() const {
  int sig = 0;
  sigwait(&set_, &sig);
  return sig;
}

bool StopSignals::wait_for(std::chrono::seconds timeout) const {
  const timespec limit{static_cast<time_t>(timeout.count()), 0};
  return sigtimedwait(&set_, nullptr, &limit) > 0;
}

}  // namespace tessera::cli
