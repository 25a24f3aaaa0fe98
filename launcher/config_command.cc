// `tessera config check|dump|reference`: the configuration every process reads.
#include <cstdio>
#include <span>
#include <string>

#include "launcher/commands.h"
#include "tessera/common/cli.h"
#include "tessera/common/config.h"

namespace tessera::launcher {

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
  auto sources = tessera::parse_config_flags(std::span(args).subspan(2));
  if (!sources) return tessera::cli::usage_error(kProgram, sources.status().message());
  auto config = tessera::load_config(*sources);
  if (!config.is_ok()) {
    std::fprintf(stderr, "%s\n", config.status().message().c_str());
    return 1;
  }
  if (sub == "dump") {
    std::fputs(tessera::dump_config_yaml(*config).c_str(), stdout);
  } else {
    std::printf("%s: ok\n", sources->file ? sources->file->c_str() : "defaults");
  }
  return 0;
}


}  // namespace tessera::launcher
