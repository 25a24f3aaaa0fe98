#pragma once

#include <string_view>

namespace tessera {

// Semantic version of this build, from CMakeLists.txt's project().
std::string_view version();
// `git describe --always --dirty` at configure time, or "unknown" outside a checkout.
std::string_view git_describe();

}  // namespace tessera
