// tessera-gateway: The OpenAI-compatible HTTP front door: validates and tokenizes requests, streams token ids to a router, detokenizes the replies.
//
// The service itself lands with its issue (see docs/DEVELOPING.md); until then the binary
// answers --help and --version and refuses to start rather than pretend to serve.
#include <cstdio>

#include "tessera/common/cli.h"

namespace {

constexpr const char* kProgram = "tessera-gateway";
constexpr const char* kHelp =
    "Usage: tessera-gateway [--help] [--version]\n"
    "\n"
    "The OpenAI-compatible HTTP front door: validates and tokenizes requests, streams token ids to a router, detokenizes the replies.\n"
    "\n"
    "Options:\n"
    "  -h, --help     show this help and exit\n"
    "      --version  print the version and exit\n";

}  // namespace

int main(int argc, char** argv) {
  const auto args = tessera::cli::args_of(argc, argv);
  if (auto code = tessera::cli::handle_help_and_version(args, kProgram, kHelp)) return *code;
  if (!args.empty()) return tessera::cli::usage_error(kProgram, "unknown argument '" + args.front() + "'");
  std::fprintf(stderr, "%s: the gateway service is not built yet in this version\n", kProgram);
  return 1;
}
