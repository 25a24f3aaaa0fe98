// `tessera config check|dump|reference`: the configuration every process reads.
#include <cstdio>
#include <optional>
#include <string>

#include "launcher/commands.h"
#include "tessera/common/cli.h"
#include "tessera/common/config.h"

namespace tessera::launcher {
namespace {

struct ConfigArgs {
  tessera::ConfigSources sources;
  std::string error;
};

ConfigArgs parse_config_args(const Args& args, std::size_t first) {
  ConfigArgs out;
  for (std::size_t i = first; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&](std::string_view flag) -> std::optional<std::string> {
      if (a == flag) {
        if (i + 1 >= args.size()) {
          out.error = std::string(flag) + " needs a value";
          return std::nullopt;
        }
        return args[++i];
      }
      std::string prefix = std::string(flag) + "=";
      if (a.starts_with(prefix)) return a.substr(prefix.size());
      return std::nullopt;
    };
    if (auto v = value("--config")) {
      out.sources.file = *v;
    } else if (auto s = value("--set")) {
      out.sources.overrides.push_back(*s);
    } else if (out.error.empty()) {
      out.error = "unknown argument '" + a + "'";
    }
    if (!out.error.empty()) break;
  }
  return out;
}

}  // namespace

int run_config(const Args& args) {
  if (args.size() < 2) return tessera::cli::usage_error(kProgram, "config needs a subcommand: check, dump or reference");
  const std::string& sub = args[1];
  if (sub == "reference") {
    if (args.size() > 2) return tessera::cli::usage_error(kProgram, "config reference takes no arguments");
    std::fputs(tessera::config_reference_markdown().c_str(), stdout);
    return 0;
  }
  if (sub != "check" && sub != "dump") {
    return tessera::cli::usage_error(kProgram, "unknown config subcommand '" + sub + "'");
  }
  ConfigArgs parsed = parse_config_args(args, 2);
  if (!parsed.error.empty()) return tessera::cli::usage_error(kProgram, parsed.error);
  auto config = tessera::load_config(parsed.sources);
  if (!config.is_ok()) {
    std::fprintf(stderr, "%s\n", config.status().message().c_str());
    return 1;
  }
  if (sub == "dump") {
    std::fputs(tessera::dump_config_yaml(*config).c_str(), stdout);
  } else {
    std::printf("%s: ok\n", parsed.sources.file ? parsed.sources.file->c_str() : "defaults");
  }
  return 0;
}


}  // namespace tessera::launcher
