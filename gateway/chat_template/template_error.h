// TemplateError: how the lexer, parser and evaluator unwind on an error.
//
// Recursive descent and tree walking report errors from deep inside; an exception carrying
// the Status keeps every step free of error plumbing. It never leaves the library:
// ChatTemplate's public functions catch it and return the Status.
#pragma once

#include <stdexcept>
#include <string>

#include "tessera/common/status.h"

namespace tessera::chat_template {

struct SourcePos {
  int line = 1;
  int column = 1;
};

class TemplateError : public std::runtime_error {
 public:
  explicit TemplateError(Status status)
      : std::runtime_error(status.message()), status_(std::move(status)) {}
  const Status& status() const { return status_; }

 private:
  Status status_;
};

// A syntax error found while loading: "chat template 3:14: unknown filter 'foo'".
[[noreturn]] inline void throw_syntax_error(SourcePos pos, const std::string& message) {
  throw TemplateError(invalid_argument("chat template " + std::to_string(pos.line) + ":" +
                                       std::to_string(pos.column) + ": " + message));
}

// A template or its input went past one of render_limits.h's bounds.
[[noreturn]] inline void throw_limit_error(const std::string& message) {
  throw TemplateError(resource_exhausted("chat template: " + message));
}

// A render-time failure that is not the template's own raise_exception().
[[noreturn]] inline void throw_render_error(const std::string& message) {
  throw TemplateError(invalid_argument("chat template: " + message));
}

}  // namespace tessera::chat_template
