// Whole-file reads shared by the loaders of configs, model configs and tokenizers.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>

#include "tessera/common/status.h"

namespace tessera {

// The file's bytes. NOT_FOUND "<path>: cannot open <what>" when it cannot be opened,
// DATA_LOSS "<path>: read error" when reading fails part-way.
Result<std::string> read_file(const std::filesystem::path& path, std::string_view what = "file");

}  // namespace tessera
