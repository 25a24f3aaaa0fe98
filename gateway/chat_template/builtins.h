// The Python and Jinja semantics behind templates' operators, attribute access, methods,
// filters and tests. Failures throw TemplateError with the message Jinja would give.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "gateway/chat_template/value.h"

namespace tessera::chat_template {

struct CallArgs {
  ValueList positional;
  std::vector<std::pair<std::string, Value>> named;

  // The argument at `index`, or the keyword `name`, or null.
  const Value* get(size_t index, std::string_view name) const;
  // A keyword-only argument, or null.
  const Value* keyword(std::string_view name) const;
};

// Checked at load, so an unknown name is a syntax error rather than a render failure.
bool is_known_filter(std::string_view name);
bool is_known_test(std::string_view name);

Value apply_filter(std::string_view name, const Value& input, const CallArgs& args);
bool apply_test(std::string_view name, const Value& input, const CallArgs& args);

// obj.name: a bound method when the type has one by that name, else the dict item, else
// undefined. Throws when obj itself is undefined, as Jinja's Undefined does.
Value get_attribute(const Value& obj, std::string_view name);
// obj[key]: item first, then attribute, as Jinja's getitem does.
Value get_item(const Value& obj, const Value& key);
// obj[start:stop:step] with Python's rules; strings slice by code point.
Value get_slice(const Value& obj, const Value& start, const Value& stop, const Value& step);
// Calls a method produced by get_attribute.
Value call_method(const Callable& method, const CallArgs& args);

// Python's binary operators ("+", "-", "*", "/", "//", "%", "**", "~") and comparisons
// ("==", "!=", "<", ">", "<=", ">=", "in", "not in").
Value binary_operation(std::string_view op, const Value& left, const Value& right);
// Iteration as Jinja does it: lists, dict keys, string characters; undefined is empty.
ValueList iterate(const Value& v);

// json.dumps(value, ensure_ascii=False, indent=indent, sort_keys=sort_keys): the tojson
// transformers installs. indent < 0 means None.
std::string to_json(const Value& v, int indent, bool sort_keys);

// Python's str methods of the same names, shared by methods and filters. Case mapping is
// ASCII-only: non-ASCII letters pass through unchanged.
std::string ascii_upper(std::string s);
std::string ascii_lower(std::string s);
std::string title_case(const std::string& s);
std::string capitalize(const std::string& s);

// Raises the error Jinja raises when an undefined value is used in an operation.
[[noreturn]] void throw_undefined(const Value& v);

}  // namespace tessera::chat_template
