// tessera-router: Schedules every token of every request over one or more worker groups: admission, KV pages, prefix cache, continuous batching.
//
// The service itself lands with its issue (see docs/DEVELOPING.md); until then the binary
// answers --help and --version and refuses to start rather than pretend to serve.
#include <cstdio>

#include "tessera/common/cli.h"

namespace {

constexpr const char* kProgram = "tessera-router";
constexpr const char* kHelp =
    "Usage: tessera-router [--help] [--version]\n"
    "\n"
    "Schedules every token of every request over one or more worker groups: admission, KV pages, prefix cache, continuous batching.\n"
    "\n"
    "Options:\n"
    "  -h, --help     show this help and exit\n"
    "      --version  print the version and exit\n";

}  // namespace

int main(int argc, char** argv) {
  const auto args = tessera::cli::args_of(argc, argv);
  if (auto code = tessera::cli::handle_help_and_version(args, kProgram, kHelp)) return *code;
  if (!args.empty()) return tessera::cli::usage_error(kProgram, "unknown argument '" + args.front() + "'");
  std::fprintf(stderr, "%s: the router service is not built yet in this version\n", kProgram);
  return 1;
}
