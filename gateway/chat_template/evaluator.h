// Evaluator: renders a compiled Program against a set of variables. Stateless between
// renders; one render runs on the calling thread and touches nothing shared but the
// immutable Program.
#pragma once

#include <ctime>
#include <functional>
#include <string>

#include "gateway/chat_template/ast.h"

namespace tessera::chat_template {

// The local time strftime_now() formats; injectable so tests are reproducible.
using LocalClock = std::function<std::tm()>;

// Throws TemplateError. raise_exception(msg) surfaces as INVALID_ARGUMENT with exactly msg.
std::string render_program(const Program& program, const ValueDict& variables, const LocalClock& clock);

}  // namespace tessera::chat_template
