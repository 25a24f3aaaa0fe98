// The syntax tree a template compiles to once, at load; rendering only walks it.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "gateway/chat_template/template_error.h"
#include "gateway/chat_template/value.h"

namespace tessera::chat_template {

enum class ExprKind {
  kLiteral,   // literal
  kName,      // name
  kGetAttr,   // operands[0].name
  kGetItem,   // operands[0][operands[1]]
  kSlice,     // operands[0][operands[1]:operands[2]:operands[3]], each bound may be null
  kCall,      // operands[0](operands[1..], kwargs)
  kFilter,    // operands[0] | name(operands[1..], kwargs)
  kTest,      // operands[0] is [not] name(operands[1..])
  kNot,       // not operands[0]
  kNegate,    // -operands[0]
  kBinary,    // operands[0] name operands[1], name is the operator ("+", "in", "not in", ...)
  kAnd,
  kOr,
  kCondition, // operands[0] if operands[1] else operands[2] (null: undefined)
  kList,      // [operands...]; name "tuple" for (a, b)
  kDict,      // {operands[0]: operands[1], ...}
};

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  ExprKind kind = ExprKind::kLiteral;
  SourcePos pos;
  Value literal;
  std::string name;
  std::vector<ExprPtr> operands;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  bool negated = false;  // kTest: "is not"
};

enum class StmtKind {
  kText,      // text
  kPrint,     // {{ expr }}
  kIf,        // branches, else_body
  kFor,       // {% for targets in expr [if filter] %} body [else else_body]
  kSet,       // {% set targets = expr %} or {% set targets[0].attribute = expr %}
  kSetBlock,  // {% set targets[0] %} body {% endset %}
  kBreak,
  kContinue,
  kScope,     // a block rendered as-is: transformers' {% generation %}
  kMacro,     // {% macro name(targets = defaults) %} body
  kFilterBlock,  // {% filter expr %} body: expr is a kFilter chain whose innermost input is empty
};

struct Stmt;
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

struct Stmt {
  StmtKind kind = StmtKind::kText;
  SourcePos pos;
  std::string text;
  ExprPtr expr;
  std::vector<std::pair<ExprPtr, Body>> branches;
  Body body;
  Body else_body;
  std::vector<std::string> targets;
  std::string attribute;            // kSet on a namespace: ns.attribute
  ExprPtr filter;                   // kFor: the inline "if" condition
  std::vector<ExprPtr> defaults;    // kMacro: per target, null when none
};

// A compiled template: shared, immutable, safe to render from many threads.
struct Program {
  Body body;
  // Macros by name, pointing into body; filled by the parser.
  std::vector<const Stmt*> macros;
};

}  // namespace tessera::chat_template
