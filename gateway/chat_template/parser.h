// Parser: tokens to a Program. Everything the engine cannot render is rejected here, at
// load, with its line and column: unknown tags, filters and tests, unclosed blocks.
#pragma once

#include <memory>
#include <string_view>

#include "gateway/chat_template/ast.h"

namespace tessera::chat_template {

// Throws TemplateError on a syntax error.
std::shared_ptr<const Program> parse_template(std::string_view source);

}  // namespace tessera::chat_template
