// tessera-router. The service lands with its issue (see docs/DEVELOPING.md); until then the
// binary answers --help and --version and refuses to start rather than pretend to serve.
#include "tessera/common/cli.h"

int main(int argc, char** argv) {
  return tessera::cli::run_unbuilt_tier(argc, argv, "tessera-router",
                                        "Schedules every token of every request over one or more worker groups: admission, KV\npages, prefix cache, continuous batching.");
}
