// Lexer: template source to tokens, with Jinja's whitespace control already applied to the
// text between tags, configured as transformers configures Jinja for chat templates
// (trim_blocks, lstrip_blocks, keep_trailing_newline off).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "gateway/chat_template/template_error.h"

namespace tessera::chat_template {

enum class TokenKind {
  kText,        // literal output
  kPrintBegin,  // {{
  kPrintEnd,    // }}
  kBlockBegin,  // {%
  kBlockEnd,    // %}
  kName,
  kString,      // text holds the decoded value
  kInt,
  kFloat,
  kOperator,    // text holds the operator: "+", "==", "(", ...
  kEof,
};

struct Token {
  TokenKind kind = TokenKind::kEof;
  std::string text;
  SourcePos pos;
  int64_t int_value = 0;
  double float_value = 0;
};

// Throws TemplateError (with line:column) on an unterminated tag, string or comment, or a
// character that starts no token.
std::vector<Token> tokenize(std::string_view source);

}  // namespace tessera::chat_template
