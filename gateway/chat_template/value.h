// Value: the dynamic value a chat template computes with, modelled on the Python objects
// Jinja sees when transformers renders (str, int, float, bool, None, list, dict), plus
// Jinja's Undefined and the callables a template may hold (globals, bound methods).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace tessera::chat_template {

class Value;
using ValueList = std::vector<Value>;

// Insertion-ordered, string-keyed: JSON objects keep their order through tojson, as Python
// dicts do. Lookups are linear; template dicts are small.
struct ValueDict {
  std::vector<std::pair<std::string, Value>> entries;
  // namespace() objects are the only dicts a template may assign attributes on.
  bool is_namespace = false;

  const Value* find(std::string_view key) const;
  void set(std::string key, Value value);
};

enum class ValueKind { kUndefined, kNone, kBool, kInt, kFloat, kString, kList, kDict, kCallable };

// A global function (`range`) or a method bound to its receiver (`"a b".split`).
struct Callable {
  std::string name;
  std::shared_ptr<const Value> self;  // null for globals
};

class Value {
 public:
  Value() = default;  // undefined
  static Value undefined(std::string hint = {});
  static Value none();
  Value(bool b);                 // NOLINT: literal-like
  Value(int64_t i);              // NOLINT
  Value(int i) : Value(static_cast<int64_t>(i)) {}  // NOLINT
  Value(double d);               // NOLINT
  Value(std::string s);          // NOLINT
  Value(const char* s) : Value(std::string(s)) {}   // NOLINT
  Value(ValueList list);         // NOLINT
  // A list that prints as a Python tuple, "(1, 2)", and never equals a list.
  static Value tuple(ValueList items);
  Value(ValueDict dict);         // NOLINT
  static Value callable(std::string name, std::shared_ptr<const Value> self = nullptr);
  // Throws TemplateError when j nests deeper than kMaxValueDepth or holds an integer beyond
  // int64 (Python would keep it exact; we refuse rather than print a wrapped number).
  static Value from_json(const nlohmann::ordered_json& j);

  ValueKind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == ValueKind::kUndefined; }
  bool is_none() const { return kind_ == ValueKind::kNone; }
  bool is_string() const { return kind_ == ValueKind::kString; }
  bool is_list() const { return kind_ == ValueKind::kList; }
  bool is_tuple() const { return is_tuple_; }
  bool is_dict() const { return kind_ == ValueKind::kDict; }
  // Lists and dicts nested inside this value, counting itself: 0 for a scalar.
  int depth() const { return depth_; }
  // Whether this is, or contains, a namespace: the only values a namespace attribute may not
  // hold, since a namespace that reaches itself would be a cycle (leaked, endlessly printed).
  bool holds_namespace() const { return holds_namespace_; }
  bool is_number() const {
    return kind_ == ValueKind::kInt || kind_ == ValueKind::kFloat || kind_ == ValueKind::kBool;
  }

  bool as_bool() const { return bool_; }
  int64_t as_int() const { return int_; }
  double as_double() const;  // any number, bools as 0/1
  const std::string& as_string() const { return *string_; }
  const ValueList& as_list() const { return *list_; }
  const ValueDict& as_dict() const { return *dict_; }
  // Namespaces are shared by reference, like the Python object behind them.
  ValueDict& mutable_dict() const { return *dict_; }
  const Callable& as_callable() const { return *callable_; }
  // Why an undefined value is undefined, for the error raised when it is used.
  const std::string& undefined_hint() const;

  // Python truthiness.
  bool truthy() const;
  // str(value) as Jinja prints it: undefined prints as "", None as "None".
  std::string to_str() const;
  // repr(value), as str() of a list or dict shows its items.
  std::string repr() const;
  // Python ==, where 1 == 1.0 == True; Undefined equals only Undefined.
  bool equals(const Value& other) const;
  // Jinja's name for the type in messages: "str object", "None", ...
  std::string type_repr() const;

 private:
  ValueKind kind_ = ValueKind::kUndefined;
  bool bool_ = false;
  bool is_tuple_ = false;
  bool holds_namespace_ = false;
  // Bounded by kMaxValueDepth when a list or dict is built, so that the recursive walks
  // (repr, ==, tojson, destruction) stay within the stack.
  uint16_t depth_ = 0;
  int64_t int_ = 0;
  double float_ = 0;
  std::shared_ptr<const std::string> string_;
  std::shared_ptr<const ValueList> list_;
  std::shared_ptr<ValueDict> dict_;
  std::shared_ptr<const Callable> callable_;
};

// Python's repr() of a float: shortest round-trip digits, "1.0", "1e+20", "inf".
std::string python_float_repr(double d);

// Code points of a UTF-8 string, as byte offsets: Python indexes and slices str by code point.
std::vector<size_t> utf8_offsets(std::string_view s);
// The number of code points, len(str), without building the offsets.
size_t utf8_length(std::string_view s);

}  // namespace tessera::chat_template
