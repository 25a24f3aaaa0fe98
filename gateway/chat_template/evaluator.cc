#include "gateway/chat_template/evaluator.h"

#include <chrono>

#include "gateway/chat_template/builtins.h"
#include "gateway/chat_template/render_limits.h"

namespace tessera::chat_template {
namespace {

enum class Flow { kNormal, kBreak, kContinue };

constexpr int kMaxMacroDepth = 64;
// What a loop iteration and a macro call cost in evaluation steps: each does the work of
// several expression nodes (a frame, the loop object, argument binding).
constexpr int64_t kLoopIterationSteps = 10;
constexpr int64_t kMacroCallSteps = 20;

// Jinja's scoping: a for loop body (each iteration afresh) and a macro call get their own
// frame; if-blocks and the top level share the enclosing one. `set` writes the innermost
// frame, which is why templates carry state out of loops with namespace().
class Evaluator {
 public:
  Evaluator(const Program& program, const ValueDict& variables, const LocalClock& clock)
      : program_(program), globals_(variables), clock_(clock) {
    frames_.emplace_back();
  }

  std::string run() {
    std::string out;
    render_body(program_.body, out);
    return out;
  }

 private:
  // Counts one level of evaluation recursion (and one step) for its scope.
  class DepthGuard {
   public:
    explicit DepthGuard(Evaluator& ev) : ev_(ev) {
      ev_.budget_.charge_steps(1);
      if (++ev_.depth_ > kMaxRenderDepth) {
        throw_limit_error("evaluation nested deeper than " + std::to_string(kMaxRenderDepth) +
                          " levels (runaway macro recursion?)");
      }
    }
    ~DepthGuard() { --ev_.depth_; }
    DepthGuard(const DepthGuard&) = delete;
    DepthGuard& operator=(const DepthGuard&) = delete;

   private:
    Evaluator& ev_;
  };

  // ---- statements ------------------------------------------------------------------
  Flow render_body(const Body& body, std::string& out) {
    for (const StmtPtr& s : body) {
      Flow flow = render_statement(*s, out);
      if (flow != Flow::kNormal) return flow;
    }
    return Flow::kNormal;
  }

  Flow render_statement(const Stmt& s, std::string& out) {
    DepthGuard guard(*this);
    switch (s.kind) {
      case StmtKind::kText: append_checked(out, s.text); return Flow::kNormal;
      case StmtKind::kPrint: {
        Value v = eval(*s.expr);
        if (v.is_string()) {
          append_checked(out, v.as_string());
        } else {
          append_checked(out, v.to_str());
        }
        return Flow::kNormal;
      }
      case StmtKind::kIf:
        for (const auto& [cond, body] : s.branches) {
          if (eval(*cond).truthy()) return render_body(body, out);
        }
        return render_body(s.else_body, out);
      case StmtKind::kFor: return render_for(s, out);
      case StmtKind::kSet: assign(s, eval(*s.expr)); return Flow::kNormal;
      case StmtKind::kSetBlock: {
        std::string captured;
        Flow flow = render_body(s.body, captured);
        frames_.back().set(s.targets[0], Value(std::move(captured)));
        return flow;
      }
      case StmtKind::kBreak: return Flow::kBreak;
      case StmtKind::kContinue: return Flow::kContinue;
      case StmtKind::kScope: return render_body(s.body, out);
      case StmtKind::kFilterBlock: {
        std::string captured;
        Flow flow = render_body(s.body, captured);
        append_checked(out, apply_filter_chain(*s.expr, Value(std::move(captured))).to_str());
        return flow;
      }
      case StmtKind::kMacro:
        frames_.back().set(s.text, Value::callable("macro:" + s.text));
        return Flow::kNormal;
    }
    return Flow::kNormal;
  }

  // Applies the filters of a {% filter %} tag, innermost first, to the block's text.
  Value apply_filter_chain(const Expr& chain, const Value& input) {
    if (chain.kind != ExprKind::kFilter) return input;
    Value inner = apply_filter_chain(*chain.operands[0], input);
    return apply_filter(chain.name, inner, eval_args(chain, 1));
  }

  void assign(const Stmt& s, const Value& value) {
    if (!s.attribute.empty()) {
      Value target = lookup(s.targets[0]);
      if (!target.is_dict() || !target.as_dict().is_namespace) {
        throw_render_error("cannot assign attribute on non-namespace object");
      }
      if (value.holds_namespace()) {
        // Jinja allows it, but `ns.self = ns` is a cycle: printed forever, never freed.
        throw_render_error("a namespace attribute cannot hold a namespace");
      }
      target.mutable_dict().set(s.attribute, value);
      return;
    }
    if (s.targets.size() == 1) {
      frames_.back().set(s.targets[0], value);
      return;
    }
    ValueList items = iterate(value);
    if (items.size() != s.targets.size()) throw_render_error("wrong number of values to unpack");
    for (size_t i = 0; i < items.size(); ++i) frames_.back().set(s.targets[i], items[i]);
  }

  void bind_targets(const std::vector<std::string>& targets, const Value& item) {
    if (targets.size() == 1) {
      frames_.back().set(targets[0], item);
      return;
    }
    ValueList parts = iterate(item);
    if (parts.size() != targets.size()) {
      throw_render_error("cannot unpack " + std::to_string(parts.size()) + " values into " +
                         std::to_string(targets.size()) + " loop variables");
    }
    for (size_t i = 0; i < parts.size(); ++i) frames_.back().set(targets[i], parts[i]);
  }

  Flow render_for(const Stmt& s, std::string& out) {
    ValueList items = iterate(eval(*s.expr));
    if (s.filter) {
      // The inline condition filters before the loop starts, so loop.length and
      // loop.last count only the items that pass.
      ValueList kept;
      for (const Value& item : items) {
        frames_.emplace_back();
        bind_targets(s.targets, item);
        bool keep = eval(*s.filter).truthy();
        frames_.pop_back();
        if (keep) kept.push_back(item);
      }
      items = std::move(kept);
    }
    if (items.empty()) return render_body(s.else_body, out);
    const int64_t n = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < n; ++i) {
      // An empty body still costs its iterations; each builds a frame and a loop object.
      budget_.charge_steps(kLoopIterationSteps);
      frames_.emplace_back();
      ValueDict loop;
      loop.entries = {{"index", Value(i + 1)},
                      {"index0", Value(i)},
                      {"revindex", Value(n - i)},
                      {"revindex0", Value(n - i - 1)},
                      {"first", Value(i == 0)},
                      {"last", Value(i == n - 1)},
                      {"length", Value(n)},
                      {"previtem", i > 0 ? items[static_cast<size_t>(i - 1)] : Value::undefined("there is no previous item")},
                      {"nextitem", i + 1 < n ? items[static_cast<size_t>(i + 1)] : Value::undefined("there is no next item")}};
      frames_.back().set("loop", Value(std::move(loop)));
      bind_targets(s.targets, items[static_cast<size_t>(i)]);
      Flow flow = render_body(s.body, out);
      frames_.pop_back();
      if (flow == Flow::kBreak) break;
    }
    return Flow::kNormal;
  }

  // ---- expressions -----------------------------------------------------------------
  Value lookup(const std::string& name) const {
    for (auto it = frames_.rbegin(); it != frames_.rend(); ++it) {
      if (const Value* v = it->find(name)) return *v;
    }
    if (const Value* v = globals_.find(name)) return *v;
    if (name == "range" || name == "namespace" || name == "raise_exception" || name == "strftime_now" ||
        name == "dict") {
      return Value::callable(name);
    }
    return Value::undefined("'" + name + "' is undefined");
  }

  CallArgs eval_args(const Expr& e, size_t first) {
    CallArgs args;
    for (size_t i = first; i < e.operands.size(); ++i) args.positional.push_back(eval(*e.operands[i]));
    for (const auto& [k, v] : e.kwargs) args.named.emplace_back(k, eval(*v));
    return args;
  }

  Value eval(const Expr& e) {
    DepthGuard guard(*this);
    Value v = eval_node(e);
    // Strings that operations built count against the render's total; names and literals
    // only share existing ones.
    if (v.is_string() && e.kind != ExprKind::kLiteral && e.kind != ExprKind::kName &&
        e.kind != ExprKind::kGetAttr && e.kind != ExprKind::kGetItem) {
      budget_.charge_bytes(v.as_string().size());
    }
    return v;
  }

  Value eval_node(const Expr& e) {
    switch (e.kind) {
      case ExprKind::kLiteral: return e.literal;
      case ExprKind::kName: return lookup(e.name);
      case ExprKind::kGetAttr: return get_attribute(eval(*e.operands[0]), e.name);
      case ExprKind::kGetItem: {
        Value obj = eval(*e.operands[0]);
        return get_item(obj, eval(*e.operands[1]));
      }
      case ExprKind::kSlice: {
        Value obj = eval(*e.operands[0]);
        auto bound = [&](size_t i) { return e.operands[i] ? eval(*e.operands[i]) : Value::none(); };
        return get_slice(obj, bound(1), bound(2), bound(3));
      }
      case ExprKind::kCall: {
        Value callee = eval(*e.operands[0]);
        return call(callee, eval_args(e, 1));
      }
      case ExprKind::kFilter: {
        Value input = eval(*e.operands[0]);
        return apply_filter(e.name, input, eval_args(e, 1));
      }
      case ExprKind::kTest: {
        Value input = eval(*e.operands[0]);
        bool result = apply_test(e.name, input, eval_args(e, 1));
        return Value(result != e.negated);
      }
      case ExprKind::kNot: return Value(!eval(*e.operands[0]).truthy());
      case ExprKind::kNegate: {
        Value v = eval(*e.operands[0]);
        if (v.kind() == ValueKind::kFloat) return Value(-v.as_double());
        if (v.is_number()) return binary_operation("-", Value(int64_t{0}), v);
        if (v.is_undefined()) throw_undefined(v);
        throw_render_error("bad operand type for unary -: '" + v.type_repr() + "'");
      }
      case ExprKind::kBinary: {
        Value left = eval(*e.operands[0]);
        Value right = eval(*e.operands[1]);
        return binary_operation(e.name, left, right);
      }
      case ExprKind::kAnd: {
        Value left = eval(*e.operands[0]);
        return left.truthy() ? eval(*e.operands[1]) : left;
      }
      case ExprKind::kOr: {
        Value left = eval(*e.operands[0]);
        return left.truthy() ? left : eval(*e.operands[1]);
      }
      case ExprKind::kCondition:
        if (eval(*e.operands[1]).truthy()) return eval(*e.operands[0]);
        return e.operands[2] ? eval(*e.operands[2]) : Value::undefined("conditional expression had no else");
      case ExprKind::kList: {
        ValueList items;
        for (const ExprPtr& op : e.operands) items.push_back(eval(*op));
        return e.name == "tuple" ? Value::tuple(std::move(items)) : Value(std::move(items));
      }
      case ExprKind::kDict: {
        ValueDict dict;
        for (size_t i = 0; i + 1 < e.operands.size(); i += 2) {
          Value key = eval(*e.operands[i]);
          if (!key.is_string()) throw_render_error("only string keys are supported in dict literals");
          dict.set(key.as_string(), eval(*e.operands[i + 1]));
        }
        return Value(std::move(dict));
      }
    }
    throw_render_error("unhandled expression");
  }

  // ---- calls -----------------------------------------------------------------------
  Value call(const Value& callee, const CallArgs& args) {
    if (callee.is_undefined()) throw_undefined(callee);
    if (callee.kind() != ValueKind::kCallable) throw_render_error("'" + callee.type_repr() + "' is not callable");
    const Callable& c = callee.as_callable();
    if (c.self) return call_method(c, args);
    if (c.name == "raise_exception") {
      const Value* message = args.get(0, "message");
      throw TemplateError(invalid_argument(message != nullptr ? message->to_str() : std::string()));
    }
    if (c.name == "range") return range(args);
    if (c.name == "namespace" || c.name == "dict") {
      ValueDict dict;
      dict.is_namespace = c.name == "namespace";
      if (const Value* init = args.get(0, ""); init != nullptr && init->is_dict()) dict = init->as_dict();
      dict.is_namespace = c.name == "namespace";
      for (const auto& [k, v] : args.named) dict.set(k, v);
      return Value(std::move(dict));
    }
    if (c.name == "strftime_now") return strftime_now(args);
    if (c.name.rfind("macro:", 0) == 0) return call_macro(c.name.substr(6), args);
    throw_render_error("unknown function '" + c.name + "'");
  }

  static Value range(const CallArgs& args) {
    int64_t start = 0;
    int64_t stop = 0;
    int64_t step = 1;
    auto int_arg = [&](size_t i) {
      const Value& v = args.positional[i];
      if (!v.is_number() || v.kind() == ValueKind::kFloat) throw_render_error("range() needs integers");
      return v.as_int();
    };
    if (args.positional.size() == 1) {
      stop = int_arg(0);
    } else if (args.positional.size() >= 2) {
      start = int_arg(0);
      stop = int_arg(1);
      if (args.positional.size() >= 3) step = int_arg(2);
    } else {
      throw_render_error("range expected at least 1 argument");
    }
    if (step == 0) throw_render_error("range() arg 3 must not be zero");
    // The length first, in unsigned arithmetic: stepping i towards a stop near INT64_MAX
    // would overflow.
    bool up = step > 0;
    uint64_t span = up ? (stop > start ? static_cast<uint64_t>(stop) - static_cast<uint64_t>(start) : 0)
                       : (start > stop ? static_cast<uint64_t>(start) - static_cast<uint64_t>(stop) : 0);
    uint64_t magnitude = up ? static_cast<uint64_t>(step) : uint64_t{0} - static_cast<uint64_t>(step);
    uint64_t count = span == 0 ? 0 : (span - 1) / magnitude + 1;
    // transformers renders in Jinja's sandbox, which refuses the same ranges.
    if (count > static_cast<uint64_t>(kMaxRangeItems)) {
      throw_limit_error("range too big: more than " + std::to_string(kMaxRangeItems) + " items");
    }
    ValueList out;
    out.reserve(count);
    for (uint64_t k = 0; k < count; ++k) {
      // Wraps modulo 2**64 on the way, lands on the exact in-range value.
      out.emplace_back(static_cast<int64_t>(static_cast<uint64_t>(start) + k * static_cast<uint64_t>(step)));
    }
    return Value(std::move(out));
  }

  Value strftime_now(const CallArgs& args) {
    const Value* format = args.get(0, "format");
    if (format == nullptr || !format->is_string()) throw_render_error("strftime_now() needs a format string");
    std::tm tm = clock_();
    char buf[512];
    size_t n = std::strftime(buf, sizeof(buf), format->as_string().c_str(), &tm);
    return Value(std::string(buf, n));
  }

  Value call_macro(const std::string& name, const CallArgs& args) {
    const Stmt* macro = nullptr;
    for (const Stmt* m : program_.macros) {
      if (m->text == name) macro = m;
    }
    if (macro == nullptr) throw_render_error("macro '" + name + "' is not defined at top level");
    // A template may come from a hostile model file: runaway recursion must end in an
    // error, not a crashed gateway.
    if (macro_depth_ >= kMaxMacroDepth) throw_render_error("macro recursion deeper than " + std::to_string(kMaxMacroDepth));
    // A call copies the top-level frame.
    budget_.charge_steps(kMacroCallSteps + static_cast<int64_t>(frames_.front().entries.size()));
    ValueDict frame;
    for (size_t i = 0; i < macro->targets.size(); ++i) {
      const Value* given = args.get(i, macro->targets[i]);
      if (given != nullptr) {
        frame.set(macro->targets[i], *given);
      } else if (macro->defaults[i]) {
        frame.set(macro->targets[i], eval(*macro->defaults[i]));
      } else {
        frame.set(macro->targets[i], Value::undefined("'" + macro->targets[i] + "' is undefined"));
      }
    }
    // A macro sees globals and top-level names, not the caller's loop variables.
    std::vector<ValueDict> saved;
    saved.swap(frames_);
    frames_.push_back(saved.front());
    frames_.push_back(std::move(frame));
    std::string out;
    ++macro_depth_;
    render_body(macro->body, out);
    --macro_depth_;
    frames_.swap(saved);
    return Value(std::move(out));
  }

  const Program& program_;
  const ValueDict& globals_;
  const LocalClock& clock_;
  std::vector<ValueDict> frames_;
  int macro_depth_ = 0;
  int depth_ = 0;  // see DepthGuard
  RenderBudget budget_;
};

}  // namespace

std::string render_program(const Program& program, const ValueDict& variables, const LocalClock& clock) {
  return Evaluator(program, variables, clock).run();
}

}  // namespace tessera::chat_template
