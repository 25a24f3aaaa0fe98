// tessera-gateway. The service lands with its issue (see docs/DEVELOPING.md); until then the
// binary answers --help and --version and refuses to start rather than pretend to serve.
#include "tessera/common/cli.h"

int main(int argc, char** argv) {
  return tessera::cli::run_unbuilt_tier(argc, argv, "tessera-gateway",
                                        "The OpenAI-compatible HTTP front door: validates and tokenizes requests, streams token ids\nto a router and detokenizes the replies.");
}
