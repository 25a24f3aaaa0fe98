#include "tessera/common/files.h"

#include <fstream>
#include <sstream>

namespace tessera {

Result<std::string> read_file(const std::filesystem::path& path, std::string_view what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return not_found(path.string() + ": cannot open " + std::string(what));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return data_loss(path.string() + ": read error");
  return text.str();
}

}  // namespace tessera
