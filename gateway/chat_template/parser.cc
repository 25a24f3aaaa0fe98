#include "gateway/chat_template/parser.h"

#include <initializer_list>

#include "gateway/chat_template/builtins.h"
#include "gateway/chat_template/lexer.h"
#include "gateway/chat_template/render_limits.h"

namespace tessera::chat_template {
namespace {

class Parser {
 public:
  explicit Parser(std::vector<Token> tokens) : tokens_(std::move(tokens)) {}

  std::shared_ptr<const Program> run() {
    auto program = std::make_shared<Program>();
    std::string_view end_tag;
    program->body = parse_body({}, &end_tag);
    for (const StmtPtr& s : program->body) {
      if (s->kind == StmtKind::kMacro) program->macros.push_back(s.get());
    }
    return program;
  }

 private:
  // One level of syntax-tree depth: a nested block, a parenthesised or operand expression, or
  // one more operator in a chain ("a + b + c" is a tree as deep as it is long). Everything
  // that builds, walks or frees the tree recurses along that depth, so it is what bounds the
  // stack. A throw abandons the whole parse, so the count need not be unwound then.
  void enter_level() {
    if (++depth_ > kMaxNestingDepth) {
      throw_syntax_error(peek().pos, "expressions or blocks nested deeper than " +
                                         std::to_string(kMaxNestingDepth) + " levels");
    }
  }
  // A level for the guard's scope.
  class DepthGuard {
   public:
    explicit DepthGuard(Parser& p) : parser_(p) { parser_.enter_level(); }
    ~DepthGuard() { --parser_.depth_; }
    DepthGuard(const DepthGuard&) = delete;
    DepthGuard& operator=(const DepthGuard&) = delete;

   private:
    Parser& parser_;
  };
  // A level per operator of a chain, held until the chain is done.
  class ChainDepth {
   public:
    explicit ChainDepth(Parser& p) : parser_(p) {}
    void add() {
      parser_.enter_level();
      ++num_added_;
    }
    ~ChainDepth() { parser_.depth_ -= num_added_; }
    ChainDepth(const ChainDepth&) = delete;
    ChainDepth& operator=(const ChainDepth&) = delete;

   private:
    Parser& parser_;
    int num_added_ = 0;
  };

  // ---- token helpers ---------------------------------------------------------------
  const Token& peek(size_t ahead = 0) const {
    size_t i = std::min(index_ + ahead, tokens_.size() - 1);
    return tokens_[i];
  }
  const Token& next() {
    const Token& t = tokens_[index_];
    if (index_ + 1 < tokens_.size()) ++index_;
    return t;
  }
  bool at_operator(std::string_view op, size_t ahead = 0) const {
    return peek(ahead).kind == TokenKind::kOperator && peek(ahead).text == op;
  }
  bool at_name(std::string_view name, size_t ahead = 0) const {
    return peek(ahead).kind == TokenKind::kName && peek(ahead).text == name;
  }
  void expect_operator(std::string_view op) {
    if (!at_operator(op)) fail_here("expected '" + std::string(op) + "'");
    next();
  }
  std::string expect_name(std::string_view what) {
    if (peek().kind != TokenKind::kName) fail_here("expected " + std::string(what));
    return next().text;
  }
  void expect_block_end() {
    if (peek().kind != TokenKind::kBlockEnd) fail_here("expected end of tag '%}'");
    next();
  }
  [[noreturn]] void fail_here(const std::string& message) const {
    const Token& t = peek();
    std::string got = t.kind == TokenKind::kEof ? "end of template" : "'" + t.text + "'";
    throw_syntax_error(t.pos, message + ", got " + got);
  }

  // ---- statements ------------------------------------------------------------------
  // Parses until a block tag named in `ends` (left unconsumed after its name; *end_tag set),
  // or the end of the template when `ends` is empty.
  Body parse_body(std::initializer_list<std::string_view> ends, std::string_view* end_tag,
                  SourcePos opened_at = {}, std::string_view opened = {}) {
    Body body;
    while (true) {
      const Token& t = peek();
      if (t.kind == TokenKind::kEof) {
        if (ends.size() == 0) return body;
        throw_syntax_error(opened_at, "'" + std::string(opened) + "' block is never closed (expected '{% " +
                                          std::string(*(ends.end() - 1)) + " %}')");
      }
      if (t.kind == TokenKind::kText) {
        auto s = std::make_unique<Stmt>();
        s->kind = StmtKind::kText;
        s->pos = t.pos;
        s->text = t.text;
        body.push_back(std::move(s));
        next();
        continue;
      }
      if (t.kind == TokenKind::kPrintBegin) {
        next();
        auto s = std::make_unique<Stmt>();
        s->kind = StmtKind::kPrint;
        s->pos = t.pos;
        s->expr = parse_expression();
        if (peek().kind != TokenKind::kPrintEnd) fail_here("expected end of print tag '}}'");
        next();
        body.push_back(std::move(s));
        continue;
      }
      // A block tag.
      next();
      const Token& name_tok = peek();
      if (name_tok.kind != TokenKind::kName) fail_here("expected a tag name");
      for (std::string_view end : ends) {
        if (name_tok.text == end) {
          *end_tag = end;
          next();
          return body;
        }
      }
      body.push_back(parse_statement());
    }
  }

  StmtPtr parse_statement() {
    DepthGuard guard(*this);
    const Token& name_tok = next();
    const std::string& tag = name_tok.text;
    if (tag == "if") return parse_if(name_tok.pos);
    if (tag == "for") return parse_for(name_tok.pos);
    if (tag == "set") return parse_set(name_tok.pos);
    if (tag == "macro") return parse_macro(name_tok.pos);
    if (tag == "break" || tag == "continue") {
      if (loop_depth_ == 0) throw_syntax_error(name_tok.pos, "'" + tag + "' outside a for loop");
      auto s = std::make_unique<Stmt>();
      s->kind = tag == "break" ? StmtKind::kBreak : StmtKind::kContinue;
      s->pos = name_tok.pos;
      expect_block_end();
      return s;
    }
    if (tag == "filter") return parse_filter_block(name_tok.pos);
    if (tag == "generation") {
      auto s = std::make_unique<Stmt>();
      s->kind = StmtKind::kScope;
      s->pos = name_tok.pos;
      expect_block_end();
      std::string_view end;
      s->body = parse_body({"endgeneration"}, &end, name_tok.pos, "generation");
      expect_block_end();
      return s;
    }
    throw_syntax_error(name_tok.pos, "unknown or unsupported tag '" + tag + "'");
  }

  // {% filter name(args) | name2 %}...{% endfilter %}: the filters apply to the body's
  // output, so they are parsed as a chain over a placeholder input.
  StmtPtr parse_filter_block(SourcePos pos) {
    auto s = std::make_unique<Stmt>();
    s->kind = StmtKind::kFilterBlock;
    s->pos = pos;
    auto placeholder = make(ExprKind::kLiteral, pos);
    ExprPtr chain = std::move(placeholder);
    ChainDepth depth(*this);
    while (true) {
      depth.add();
      auto f = make(ExprKind::kFilter, peek().pos);
      f->name = expect_name("a filter name");
      if (!is_known_filter(f->name)) throw_syntax_error(f->pos, "unknown filter '" + f->name + "'");
      f->operands.push_back(std::move(chain));
      if (at_operator("(")) parse_call_arguments(*f);
      chain = std::move(f);
      if (!at_operator("|")) break;
      next();
    }
    s->expr = std::move(chain);
    expect_block_end();
    std::string_view end;
    s->body = parse_body({"endfilter"}, &end, pos, "filter");
    expect_block_end();
    return s;
  }

  StmtPtr parse_if(SourcePos pos) {
    auto s = std::make_unique<Stmt>();
    s->kind = StmtKind::kIf;
    s->pos = pos;
    ExprPtr cond = parse_expression();
    expect_block_end();
    while (true) {
      std::string_view end;
      Body body = parse_body({"elif", "else", "endif"}, &end, pos, "if");
      s->branches.emplace_back(std::move(cond), std::move(body));
      if (end == "elif") {
        cond = parse_expression();
        expect_block_end();
        continue;
      }
      expect_block_end();
      if (end == "else") {
        s->else_body = parse_body({"endif"}, &end, pos, "if");
        expect_block_end();
      }
      return s;
    }
  }

  void parse_targets(std::vector<std::string>& targets) {
    bool parens = at_operator("(");
    if (parens) next();
    targets.push_back(expect_name("a variable name"));
    while (at_operator(",")) {
      next();
      targets.push_back(expect_name("a variable name"));
    }
    if (parens) expect_operator(")");
  }

  StmtPtr parse_for(SourcePos pos) {
    auto s = std::make_unique<Stmt>();
    s->kind = StmtKind::kFor;
    s->pos = pos;
    parse_targets(s->targets);
    if (!at_name("in")) fail_here("expected 'in'");
    next();
    s->expr = parse_or_expression(/*allow_condition=*/false);
    if (at_name("if")) {
      next();
      s->filter = parse_expression();
    }
    if (at_name("recursive")) throw_syntax_error(peek().pos, "recursive for loops are not supported");
    expect_block_end();
    ++loop_depth_;
    std::string_view end;
    s->body = parse_body({"else", "endfor"}, &end, pos, "for");
    --loop_depth_;
    expect_block_end();
    if (end == "else") {
      s->else_body = parse_body({"endfor"}, &end, pos, "for");
      expect_block_end();
    }
    return s;
  }

  StmtPtr parse_set(SourcePos pos) {
    auto s = std::make_unique<Stmt>();
    s->pos = pos;
    s->targets.push_back(expect_name("a variable name"));
    if (at_operator(".")) {
      next();
      s->attribute = expect_name("an attribute name");
    } else {
      while (at_operator(",")) {
        next();
        s->targets.push_back(expect_name("a variable name"));
      }
    }
    if (peek().kind == TokenKind::kBlockEnd && s->attribute.empty() && s->targets.size() == 1) {
      next();
      s->kind = StmtKind::kSetBlock;
      std::string_view end;
      s->body = parse_body({"endset"}, &end, pos, "set");
      expect_block_end();
      return s;
    }
    s->kind = StmtKind::kSet;
    expect_operator("=");
    s->expr = parse_tuple_or_expression();
    expect_block_end();
    return s;
  }

  StmtPtr parse_macro(SourcePos pos) {
    auto s = std::make_unique<Stmt>();
    s->kind = StmtKind::kMacro;
    s->pos = pos;
    s->text = expect_name("a macro name");
    expect_operator("(");
    while (!at_operator(")")) {
      s->targets.push_back(expect_name("a parameter name"));
      if (at_operator("=")) {
        next();
        s->defaults.push_back(parse_expression());
      } else {
        s->defaults.push_back(nullptr);
      }
      if (!at_operator(")")) expect_operator(",");
    }
    next();
    expect_block_end();
    std::string_view end;
    int saved_depth = loop_depth_;
    loop_depth_ = 0;
    s->body = parse_body({"endmacro"}, &end, pos, "macro");
    loop_depth_ = saved_depth;
    expect_block_end();
    return s;
  }

  // ---- expressions -----------------------------------------------------------------
  static ExprPtr make(ExprKind kind, SourcePos pos) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->pos = pos;
    return e;
  }

  // "a, b" on the right of set builds a tuple, as in Python.
  ExprPtr parse_tuple_or_expression() {
    SourcePos pos = peek().pos;
    ExprPtr first = parse_expression();
    if (!at_operator(",")) return first;
    auto list = make(ExprKind::kList, pos);
    list->name = "tuple";
    list->operands.push_back(std::move(first));
    while (at_operator(",")) {
      next();
      list->operands.push_back(parse_expression());
    }
    return list;
  }

  ExprPtr parse_expression() { return parse_or_expression(/*allow_condition=*/true); }

  ExprPtr parse_or_expression(bool allow_condition) {
    DepthGuard guard(*this);
    ChainDepth chain(*this);
    SourcePos pos = peek().pos;
    ExprPtr left = parse_and();
    while (at_name("or")) {
      chain.add();
      next();
      auto e = make(ExprKind::kOr, pos);
      e->operands.push_back(std::move(left));
      e->operands.push_back(parse_and());
      left = std::move(e);
    }
    if (allow_condition && at_name("if")) {
      next();
      auto e = make(ExprKind::kCondition, pos);
      e->operands.push_back(std::move(left));
      e->operands.push_back(parse_or_expression(false));
      if (at_name("else")) {
        next();
        e->operands.push_back(parse_expression());
      } else {
        e->operands.push_back(nullptr);
      }
      return e;
    }
    return left;
  }

  ExprPtr parse_and() {
    SourcePos pos = peek().pos;
    ChainDepth chain(*this);
    ExprPtr left = parse_not();
    while (at_name("and")) {
      chain.add();
      next();
      auto e = make(ExprKind::kAnd, pos);
      e->operands.push_back(std::move(left));
      e->operands.push_back(parse_not());
      left = std::move(e);
    }
    return left;
  }

  ExprPtr parse_not() {
    if (at_name("not")) {
      DepthGuard guard(*this);
      SourcePos pos = next().pos;
      auto e = make(ExprKind::kNot, pos);
      e->operands.push_back(parse_not());
      return e;
    }
    return parse_compare();
  }

  ExprPtr binary(std::string op, ExprPtr left, ExprPtr right, SourcePos pos) {
    auto e = make(ExprKind::kBinary, pos);
    e->name = std::move(op);
    e->operands.push_back(std::move(left));
    e->operands.push_back(std::move(right));
    return e;
  }

  static bool is_comparison(const Token& t) {
    return t.kind == TokenKind::kOperator &&
           (t.text == "==" || t.text == "!=" || t.text == "<" || t.text == ">" || t.text == "<=" || t.text == ">=");
  }

  ExprPtr parse_compare() {
    SourcePos pos = peek().pos;
    ExprPtr left = parse_add();
    std::string op;
    if (is_comparison(peek())) {
      op = next().text;
    } else if (at_name("in")) {
      next();
      op = "in";
    } else if (at_name("not") && at_name("in", 1)) {
      next();
      next();
      op = "not in";
    } else {
      return left;
    }
    left = binary(op, std::move(left), parse_add(), pos);
    // Python chains "a < b < c"; no chat template does, so refuse rather than guess.
    if (is_comparison(peek()) || at_name("in") || (at_name("not") && at_name("in", 1))) {
      throw_syntax_error(peek().pos, "chained comparisons are not supported");
    }
    return left;
  }

  ExprPtr parse_add() {
    SourcePos pos = peek().pos;
    ChainDepth chain(*this);
    ExprPtr left = parse_concat();
    while (at_operator("+") || at_operator("-")) {
      chain.add();
      std::string op = next().text;
      left = binary(op, std::move(left), parse_concat(), pos);
    }
    return left;
  }

  ExprPtr parse_concat() {
    SourcePos pos = peek().pos;
    ChainDepth chain(*this);
    ExprPtr left = parse_multiply();
    while (at_operator("~")) {
      chain.add();
      next();
      left = binary("~", std::move(left), parse_multiply(), pos);
    }
    return left;
  }

  ExprPtr parse_multiply() {
    SourcePos pos = peek().pos;
    ChainDepth chain(*this);
    ExprPtr left = parse_power();
    while (at_operator("*") || at_operator("/") || at_operator("//") || at_operator("%")) {
      chain.add();
      std::string op = next().text;
      left = binary(op, std::move(left), parse_power(), pos);
    }
    return left;
  }

  ExprPtr parse_power() {
    SourcePos pos = peek().pos;
    ChainDepth chain(*this);
    ExprPtr left = parse_unary(true);
    while (at_operator("**")) {
      chain.add();
      next();
      left = binary("**", std::move(left), parse_unary(true), pos);
    }
    return left;
  }

  ExprPtr parse_unary(bool with_filters) {
    SourcePos pos = peek().pos;
    ExprPtr e;
    if (at_operator("-")) {
      DepthGuard guard(*this);
      next();
      e = make(ExprKind::kNegate, pos);
      e->operands.push_back(parse_unary(false));
    } else if (at_operator("+")) {
      DepthGuard guard(*this);
      next();
      e = parse_unary(false);
    } else {
      e = parse_postfix(parse_primary());
    }
    if (with_filters) e = parse_filters_and_tests(std::move(e));
    return e;
  }

  ExprPtr parse_primary() {
    const Token& t = peek();
    SourcePos pos = t.pos;
    switch (t.kind) {
      case TokenKind::kString: {
        std::string s = next().text;
        while (peek().kind == TokenKind::kString) s += next().text;  // "a" "b" concatenates
        auto e = make(ExprKind::kLiteral, pos);
        e->literal = Value(std::move(s));
        return e;
      }
      case TokenKind::kInt: {
        auto e = make(ExprKind::kLiteral, pos);
        e->literal = Value(next().int_value);
        return e;
      }
      case TokenKind::kFloat: {
        auto e = make(ExprKind::kLiteral, pos);
        e->literal = Value(next().float_value);
        return e;
      }
      case TokenKind::kName: {
        std::string name = next().text;
        auto e = make(ExprKind::kLiteral, pos);
        if (name == "true" || name == "True") {
          e->literal = Value(true);
        } else if (name == "false" || name == "False") {
          e->literal = Value(false);
        } else if (name == "none" || name == "None") {
          e->literal = Value::none();
        } else {
          e->kind = ExprKind::kName;
          e->name = std::move(name);
        }
        return e;
      }
      case TokenKind::kOperator:
        if (t.text == "(") {
          next();
          if (at_operator(")")) {
            next();
            auto empty = make(ExprKind::kList, pos);
            empty->name = "tuple";
            return empty;
          }
          ExprPtr inner = parse_expression();
          if (at_operator(",")) {
            auto list = make(ExprKind::kList, pos);
            list->name = "tuple";
            list->operands.push_back(std::move(inner));
            while (at_operator(",")) {
              next();
              if (at_operator(")")) break;
              list->operands.push_back(parse_expression());
            }
            inner = std::move(list);
          }
          expect_operator(")");
          return inner;
        }
        if (t.text == "[") {
          next();
          auto list = make(ExprKind::kList, pos);
          while (!at_operator("]")) {
            list->operands.push_back(parse_expression());
            if (!at_operator("]")) expect_operator(",");
          }
          next();
          return list;
        }
        if (t.text == "{") {
          next();
          auto dict = make(ExprKind::kDict, pos);
          while (!at_operator("}")) {
            // Values are string-keyed, like the JSON they mostly come from; a template with
            // other keys ({16384: ...}) is refused here rather than failing mid-render.
            if (peek().kind != TokenKind::kString) fail_here("only string-literal keys are supported in dict literals");
            dict->operands.push_back(parse_expression());
            expect_operator(":");
            dict->operands.push_back(parse_expression());
            if (!at_operator("}")) expect_operator(",");
          }
          next();
          return dict;
        }
        break;
      default: break;
    }
    fail_here("expected an expression");
  }

  void parse_call_arguments(Expr& call) {
    expect_operator("(");
    while (!at_operator(")")) {
      if (peek().kind == TokenKind::kName && at_operator("=", 1)) {
        std::string key = next().text;
        next();
        call.kwargs.emplace_back(std::move(key), parse_expression());
      } else {
        if (!call.kwargs.empty()) fail_here("positional argument after keyword argument");
        call.operands.push_back(parse_expression());
      }
      if (!at_operator(")")) expect_operator(",");
    }
    next();
  }

  ExprPtr parse_postfix(ExprPtr e) {
    ChainDepth chain(*this);
    while (true) {
      if (!at_operator(".") && !at_operator("[") && !at_operator("(")) return e;
      chain.add();
      SourcePos pos = peek().pos;
      if (at_operator(".")) {
        next();
        auto attr = make(ExprKind::kGetAttr, pos);
        if (peek().kind == TokenKind::kInt) {
          attr->kind = ExprKind::kGetItem;
          attr->operands.push_back(std::move(e));
          auto index = make(ExprKind::kLiteral, pos);
          index->literal = Value(next().int_value);
          attr->operands.push_back(std::move(index));
        } else {
          attr->name = expect_name("an attribute name");
          attr->operands.push_back(std::move(e));
        }
        e = std::move(attr);
      } else if (at_operator("[")) {
        next();
        e = parse_subscript(std::move(e), pos);
      } else if (at_operator("(")) {
        auto call = make(ExprKind::kCall, pos);
        call->operands.push_back(std::move(e));
        parse_call_arguments(*call);
        e = std::move(call);
      } else {
        return e;
      }
    }
  }

  ExprPtr parse_subscript(ExprPtr object, SourcePos pos) {
    ExprPtr bounds[3];
    int n_colons = 0;
    while (true) {
      if (at_operator("]")) break;
      if (at_operator(":")) {
        next();
        if (++n_colons > 2) fail_here("too many ':' in a slice");
        continue;
      }
      if (bounds[n_colons]) fail_here("expected ':' or ']'");
      bounds[n_colons] = parse_expression();
    }
    next();
    if (n_colons == 0) {
      if (!bounds[0]) throw_syntax_error(pos, "empty subscript");
      auto e = make(ExprKind::kGetItem, pos);
      e->operands.push_back(std::move(object));
      e->operands.push_back(std::move(bounds[0]));
      return e;
    }
    auto e = make(ExprKind::kSlice, pos);
    e->operands.push_back(std::move(object));
    for (auto& b : bounds) e->operands.push_back(std::move(b));
    return e;
  }

  ExprPtr parse_filters_and_tests(ExprPtr e) {
    ChainDepth chain(*this);
    while (true) {
      if (!at_operator("|") && !at_name("is")) return e;
      chain.add();
      SourcePos pos = peek().pos;
      if (at_operator("|")) {
        next();
        auto f = make(ExprKind::kFilter, peek().pos);
        f->name = expect_name("a filter name");
        if (!is_known_filter(f->name)) throw_syntax_error(f->pos, "unknown filter '" + f->name + "'");
        f->operands.push_back(std::move(e));
        if (at_operator("(")) parse_call_arguments(*f);
        e = std::move(f);
      } else if (at_name("is")) {
        next();
        auto t = make(ExprKind::kTest, pos);
        if (at_name("not")) {
          next();
          t->negated = true;
        }
        SourcePos name_pos = peek().pos;
        if (peek().kind == TokenKind::kName) {
          t->name = next().text;
        } else if (at_operator("==") || at_operator("!=") || at_operator("<") || at_operator(">") ||
                   at_operator("<=") || at_operator(">=")) {
          t->name = next().text;
        } else {
          fail_here("expected a test name");
        }
        if (t->name == "none" || t->name == "None") t->name = "none";
        if (t->name == "true" || t->name == "True") t->name = "true";
        if (t->name == "false" || t->name == "False") t->name = "false";
        if (!is_known_test(t->name)) throw_syntax_error(name_pos, "unknown test '" + t->name + "'");
        t->operands.push_back(std::move(e));
        if (at_operator("(")) {
          parse_call_arguments(*t);
        } else if (test_takes_bare_argument()) {
          t->operands.push_back(parse_unary(false));
        }
        e = std::move(t);
      } else {
        return e;
      }
    }
  }

  // "x is equalto 3": Jinja accepts one argument without parentheses when the next token
  // can start an expression and is not a keyword that continues the surrounding one.
  bool test_takes_bare_argument() const {
    const Token& t = peek();
    switch (t.kind) {
      case TokenKind::kString:
      case TokenKind::kInt:
      case TokenKind::kFloat: return true;
      case TokenKind::kName:
        return t.text != "and" && t.text != "or" && t.text != "else" && t.text != "if" && t.text != "is" &&
               t.text != "not" && t.text != "in";
      case TokenKind::kOperator: return t.text == "[" || t.text == "{" || t.text == "-";
      default: return false;
    }
  }

  std::vector<Token> tokens_;
  size_t index_ = 0;
  int loop_depth_ = 0;
  int depth_ = 0;  // see DepthGuard
};

}  // namespace

std::shared_ptr<const Program> parse_template(std::string_view source) {
  return Parser(tokenize(source)).run();
}

}  // namespace tessera::chat_template
