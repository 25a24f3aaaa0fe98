// The `tessera` subcommands. Each takes the arguments starting with its own name and returns the
// process exit code (0 ok, 1 failure, 2 usage error).
#pragma once

#include <string>
#include <vector>

namespace tessera::launcher {

using Args = std::vector<std::string>;

inline constexpr const char* kProgram = "tessera";

int run_config(const Args& args);
int run_inspect(const Args& args);
int run_tokenize(const Args& args);
int run_detokenize(const Args& args);
int run_generate(const Args& args);
int run_loadgen(const Args& args);
int run_serve(const Args& args);

}  // namespace tessera::launcher
