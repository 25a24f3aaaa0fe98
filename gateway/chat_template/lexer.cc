#include "gateway/chat_template/lexer.h"

#include <array>
#include <cctype>
#include <charconv>
#include <cstdlib>

namespace tessera::chat_template {
namespace {

enum class TagKind { kPrint, kBlock, kComment };

// A tag's effect on the text on either side of it.
struct TagEdges {
  TagKind kind = TagKind::kBlock;
  bool strip_before = false;    // {%- : all whitespace before
  bool keep_before = false;     // {%+ : no lstrip_blocks
  bool strip_after = false;     // -%} : all whitespace after
  bool keep_after = false;     // +%} : no trim_blocks
};

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

class Lexer {
 public:
  explicit Lexer(std::string_view source) : normalized_(normalize_newlines(source)), src_(normalized_) {
    // keep_trailing_newline=False: Jinja drops one newline at the very end of the source.
    if (!src_.empty() && src_.back() == '\n') src_.remove_suffix(1);
  }

  std::vector<Token> run() {
    bool have_prev_tag = false;
    TagEdges prev;
    while (pos_ < src_.size()) {
      size_t tag_start = find_tag(pos_);
      std::string text(src_.substr(pos_, tag_start - pos_));
      size_t text_start = pos_;
      SourcePos text_pos = here();
      if (tag_start == src_.size()) {
        emit_text(std::move(text), text_start, text_pos, have_prev_tag ? &prev : nullptr, nullptr);
        advance_to(tag_start);
        break;
      }
      TagEdges next = read_tag_start(tag_start);
      emit_text(std::move(text), text_start, text_pos, have_prev_tag ? &prev : nullptr, &next);
      advance_to(tag_start);
      prev = lex_tag(next);
      have_prev_tag = true;
    }
    Token eof;
    eof.kind = TokenKind::kEof;
    eof.pos = here();
    tokens_.push_back(eof);
    return std::move(tokens_);
  }

 private:
  // Jinja reads "\r\n" and "\r" in the source as "\n" (newline_sequence), in text and string
  // literals alike, so a template saved with Windows line endings renders the same.
  static std::string normalize_newlines(std::string_view source) {
    std::string out;
    out.reserve(source.size());
    for (size_t i = 0; i < source.size(); ++i) {
      if (source[i] != '\r') {
        out += source[i];
        continue;
      }
      out += '\n';
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    }
    return out;
  }

  size_t find_tag(size_t from) const {
    for (size_t i = from; i + 1 < src_.size(); ++i) {
      if (src_[i] == '{' && (src_[i + 1] == '{' || src_[i + 1] == '%' || src_[i + 1] == '#')) return i;
    }
    return src_.size();
  }

  TagEdges read_tag_start(size_t at) const {
    TagEdges e;
    char k = src_[at + 1];
    e.kind = k == '{' ? TagKind::kPrint : (k == '%' ? TagKind::kBlock : TagKind::kComment);
    if (at + 2 < src_.size()) {
      e.strip_before = src_[at + 2] == '-';
      e.keep_before = src_[at + 2] == '+';
    }
    return e;
  }

  // Applies whitespace control to the text between two tags, then emits it.
  void emit_text(std::string text, size_t start, SourcePos pos, const TagEdges* prev, const TagEdges* next) {
    if (next != nullptr) {
      if (next->strip_before) {
        while (!text.empty() && is_space(text.back())) text.pop_back();
      } else if (next->kind != TagKind::kPrint && !next->keep_before) {
        // lstrip_blocks: drop spaces and tabs between the start of the line and the tag.
        size_t line_start = text.rfind('\n');
        bool at_line_start = line_start != std::string::npos || start == 0 || src_[start - 1] == '\n';
        size_t from = line_start == std::string::npos ? 0 : line_start + 1;
        if (at_line_start && text.find_first_not_of(" \t", from) == std::string::npos) text.resize(from);
      }
    }
    if (prev != nullptr) {
      if (prev->strip_after) {
        size_t first = 0;
        while (first < text.size() && is_space(text[first])) ++first;
        text.erase(0, first);
      } else if (prev->kind != TagKind::kPrint && !prev->keep_after && !text.empty() && text[0] == '\n') {
        text.erase(0, 1);  // trim_blocks: the first newline after a block or comment tag
      }
    }
    if (text.empty()) return;
    Token t;
    t.kind = TokenKind::kText;
    t.text = std::move(text);
    t.pos = pos;
    tokens_.push_back(std::move(t));
  }

  SourcePos here() const { return pos_info_; }

  void advance_to(size_t target) {
    for (; pos_ < target; ++pos_) {
      if (src_[pos_] == '\n') {
        ++pos_info_.line;
        pos_info_.column = 1;
      } else if ((static_cast<unsigned char>(src_[pos_]) & 0xC0) != 0x80) {
        ++pos_info_.column;
      }
    }
  }

  // Lexes one tag starting at pos_ ("{{", "{%" or "{#"); returns its edges.
  TagEdges lex_tag(TagEdges edges) {
    SourcePos open_pos = here();
    size_t body = pos_ + 2 + ((edges.strip_before || edges.keep_before) ? 1 : 0);
    if (edges.kind == TagKind::kComment) {
      size_t end = src_.find("#}", body);
      if (end == std::string_view::npos) throw_syntax_error(open_pos, "unterminated comment");
      edges.strip_after = end > body && src_[end - 1] == '-';
      advance_to(end + 2);
      return edges;
    }
    push(edges.kind == TagKind::kPrint ? TokenKind::kPrintBegin : TokenKind::kBlockBegin,
         edges.kind == TagKind::kPrint ? "{{" : "{%", open_pos);
    advance_to(body);
    const std::string_view close = edges.kind == TagKind::kPrint ? "}}" : "%}";
    while (true) {
      while (pos_ < src_.size() && is_space(src_[pos_])) advance_to(pos_ + 1);
      if (pos_ >= src_.size()) {
        throw_syntax_error(open_pos, std::string("tag is not closed with '") + std::string(close) + "'");
      }
      if (src_.substr(pos_, 2) == close) {
        push(edges.kind == TagKind::kPrint ? TokenKind::kPrintEnd : TokenKind::kBlockEnd, std::string(close), here());
        advance_to(pos_ + 2);
        return edges;
      }
      if (src_[pos_] == '-' && src_.substr(pos_ + 1, 2) == close) {
        edges.strip_after = true;
        advance_to(pos_ + 1);
        continue;
      }
      if (src_[pos_] == '+' && src_.substr(pos_ + 1, 2) == close && edges.kind == TagKind::kBlock) {
        edges.keep_after = true;
        advance_to(pos_ + 1);
        continue;
      }
      lex_expression_token();
    }
  }

  void push(TokenKind kind, std::string text, SourcePos pos) {
    Token t;
    t.kind = kind;
    t.text = std::move(text);
    t.pos = pos;
    tokens_.push_back(std::move(t));
  }

  void lex_expression_token() {
    SourcePos start = here();
    char c = src_[pos_];
    if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      size_t end = pos_;
      while (end < src_.size() && (std::isalnum(static_cast<unsigned char>(src_[end])) || src_[end] == '_')) ++end;
      push(TokenKind::kName, std::string(src_.substr(pos_, end - pos_)), start);
      advance_to(end);
      return;
    }
    if (std::isdigit(static_cast<unsigned char>(c))) {
      lex_number(start);
      return;
    }
    if (c == '\'' || c == '"') {
      lex_string(start);
      return;
    }
    static constexpr std::array<std::string_view, 29> kOperators = {
        "**", "//", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<", ">", "(", ")",
        "[", "]", "{", "}", ",", ".", ":", "|", "=", ";", "!", "?", "@"};
    for (std::string_view op : kOperators) {
      if (src_.substr(pos_, op.size()) == op) {
        if (op == "!" || op == ";" || op == "?" || op == "@") break;
        push(TokenKind::kOperator, std::string(op), start);
        advance_to(pos_ + op.size());
        return;
      }
    }
    throw_syntax_error(start, std::string("unexpected character '") + c + "'");
  }

  void lex_number(SourcePos start) {
    size_t end = pos_;
    bool is_float = false;
    auto digits = [&] {
      while (end < src_.size() && (std::isdigit(static_cast<unsigned char>(src_[end])) || src_[end] == '_')) ++end;
    };
    digits();
    if (end + 1 < src_.size() && src_[end] == '.' && std::isdigit(static_cast<unsigned char>(src_[end + 1]))) {
      is_float = true;
      ++end;
      digits();
    }
    if (end < src_.size() && (src_[end] == 'e' || src_[end] == 'E')) {
      size_t e = end + 1;
      if (e < src_.size() && (src_[e] == '+' || src_[e] == '-')) ++e;
      if (e < src_.size() && std::isdigit(static_cast<unsigned char>(src_[e]))) {
        is_float = true;
        end = e;
        digits();
      }
    }
    std::string text;
    for (size_t i = pos_; i < end; ++i) {
      if (src_[i] != '_') text += src_[i];
    }
    Token t;
    t.pos = start;
    t.text = text;
    if (is_float) {
      t.kind = TokenKind::kFloat;
      t.float_value = std::strtod(text.c_str(), nullptr);
    } else {
      t.kind = TokenKind::kInt;
      auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), t.int_value);
      // Python has big ints; a literal we would silently clamp is refused instead.
      if (ec != std::errc() || ptr != text.data() + text.size()) {
        throw_syntax_error(start, "integer literal " + text + " does not fit in 64 bits");
      }
    }
    tokens_.push_back(std::move(t));
    advance_to(end);
  }

  static void append_utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  // Python string literal escapes, as Jinja decodes them.
  void lex_string(SourcePos start) {
    char quote = src_[pos_];
    size_t i = pos_ + 1;
    std::string value;
    while (true) {
      if (i >= src_.size()) throw_syntax_error(start, "unterminated string literal");
      char c = src_[i];
      if (c == quote) break;
      if (c != '\\') {
        value += c;
        ++i;
        continue;
      }
      if (i + 1 >= src_.size()) throw_syntax_error(start, "unterminated string literal");
      char e = src_[i + 1];
      i += 2;
      switch (e) {
        case 'n': value += '\n'; break;
        case 't': value += '\t'; break;
        case 'r': value += '\r'; break;
        case '0': case '1': case '2': case '3': case '4': case '5': case '6': case '7': {
          // Octal, up to three digits: "\0" is NUL, "\012" a newline.
          uint32_t cp = static_cast<uint32_t>(e - '0');
          for (int k = 0; k < 2 && i < src_.size() && src_[i] >= '0' && src_[i] <= '7'; ++k, ++i) {
            cp = cp * 8 + static_cast<uint32_t>(src_[i] - '0');
          }
          append_utf8(value, cp);
          break;
        }
        case 'b': value += '\b'; break;
        case 'f': value += '\f'; break;
        case 'v': value += '\v'; break;
        case 'a': value += '\a'; break;
        case '\\': value += '\\'; break;
        case '\'': value += '\''; break;
        case '"': value += '"'; break;
        case '\n': break;
        case 'x':
        case 'u':
        case 'U': {
          size_t n = e == 'x' ? 2 : (e == 'u' ? 4 : 8);
          uint32_t cp = 0;
          for (size_t k = 0; k < n; ++k) {
            if (i + k >= src_.size() || !std::isxdigit(static_cast<unsigned char>(src_[i + k]))) {
              throw_syntax_error(start, std::string("truncated \\") + e + " escape in string literal");
            }
            char h = src_[i + k];
            cp = cp * 16 + static_cast<uint32_t>(std::isdigit(static_cast<unsigned char>(h)) ? h - '0'
                                                                                               : (h | 0x20) - 'a' + 10);
          }
          if (cp > 0x10FFFF) throw_syntax_error(start, "illegal Unicode character in string literal");
          append_utf8(value, cp);
          i += n;
          break;
        }
        case 'N':  // Python's \N{NAME}: would need the Unicode name table
          throw_syntax_error(start, "\\N{...} escapes are not supported in string literals");
        default:  // Python keeps unknown escapes verbatim
          value += '\\';
          value += e;
      }
    }
    Token t;
    t.kind = TokenKind::kString;
    t.text = std::move(value);
    t.pos = start;
    tokens_.push_back(std::move(t));
    advance_to(i + 1);
  }

  std::string normalized_;
  std::string_view src_;  // into normalized_
  size_t pos_ = 0;
  SourcePos pos_info_;
  std::vector<Token> tokens_;
};

}  // namespace

std::vector<Token> tokenize(std::string_view source) { return Lexer(source).run(); }

}  // namespace tessera::chat_template
