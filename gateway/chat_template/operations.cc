// Operators, iteration, attribute and item access, and the methods of str, dict and list.
#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <optional>

#include "gateway/chat_template/builtins.h"
#include "gateway/chat_template/render_limits.h"
#include "gateway/chat_template/template_error.h"

namespace tessera::chat_template {
namespace {

std::string undefined_message(const Value& v) {
  return v.undefined_hint().empty() ? "value is undefined" : v.undefined_hint();
}

[[noreturn]] void type_error(std::string_view op, const Value& a, const Value& b) {
  throw_render_error("unsupported operand types for " + std::string(op) + ": '" + a.type_repr() + "' and '" +
                     b.type_repr() + "'");
}

// type(x).__name__, as Python's TypeErrors name operands.
std::string python_type_name(const Value& v) {
  std::string name = v.type_repr();
  const std::string_view suffix = " object";
  if (name.size() > suffix.size() && name.ends_with(suffix)) name.resize(name.size() - suffix.size());
  return name == "None" ? "NoneType" : name;
}

int compare_values(const Value& a, const Value& b, std::string_view op) {
  if (a.is_number() && b.is_number()) {
    if (a.kind() == ValueKind::kFloat || b.kind() == ValueKind::kFloat) {
      double x = a.as_double();
      double y = b.as_double();
      return x < y ? -1 : (x > y ? 1 : 0);
    }
    return a.as_int() < b.as_int() ? -1 : (a.as_int() > b.as_int() ? 1 : 0);
  }
  if (a.is_string() && b.is_string()) {
    int c = a.as_string().compare(b.as_string());  // UTF-8 byte order is code point order
    return c < 0 ? -1 : (c > 0 ? 1 : 0);
  }
  if (a.is_list() && b.is_list()) {
    const ValueList& x = a.as_list();
    const ValueList& y = b.as_list();
    charge_steps(static_cast<int64_t>(std::min(x.size(), y.size())));
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
      if (!x[i].equals(y[i])) return compare_values(x[i], y[i], op);
    }
    return x.size() < y.size() ? -1 : (x.size() > y.size() ? 1 : 0);
  }
  if (a.is_undefined()) throw_undefined(a);
  if (b.is_undefined()) throw_undefined(b);
  throw_render_error("'" + std::string(op) + "' not supported between instances of '" + python_type_name(a) +
                     "' and '" + python_type_name(b) + "'");
}

bool contains(const Value& container, const Value& item) {
  switch (container.kind()) {
    case ValueKind::kString:
      if (!item.is_string()) throw_render_error("'in <string>' requires string as left operand");
      // std::string::find is O(haystack * needle) at worst: charge that, a step per 64 bytes.
      charge_steps(static_cast<int64_t>(container.as_string().size() / 64 * std::max<size_t>(1, item.as_string().size())));
      return container.as_string().find(item.as_string()) != std::string::npos;
    case ValueKind::kList:
      charge_steps(static_cast<int64_t>(container.as_list().size()));
      return std::any_of(container.as_list().begin(), container.as_list().end(),
                         [&](const Value& v) { return v.equals(item); });
    case ValueKind::kDict:
      return item.is_string() && container.as_dict().find(item.as_string()) != nullptr;
    case ValueKind::kUndefined: return false;  // Undefined iterates as empty
    default: throw_render_error("argument of type '" + container.type_repr() + "' is not iterable");
  }
}

// Python has big ints; we have 64 bits, and refuse rather than wrap (or hit C++'s UB).
[[noreturn]] void throw_overflow(std::string_view op) {
  throw_render_error("integer overflow in '" + std::string(op) + "': the result does not fit in 64 bits");
}

// Python's // and % on ints, b != 0. INT64_MIN / -1 overflows (and traps on x86).
int64_t floor_div(int64_t a, int64_t b) {
  if (b == -1) {
    if (a == std::numeric_limits<int64_t>::min()) throw_overflow("//");
    return -a;
  }
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}

int64_t floor_mod(int64_t a, int64_t b) {
  if (b == -1) return 0;
  int64_t r = a % b;
  if (r != 0 && ((r < 0) != (b < 0))) r += b;
  return r;
}

// Exponentiation by squaring: 2 ** 10**12 must fail fast, not loop 10**12 times.
int64_t int_power(int64_t base, int64_t exponent) {
  int64_t result = 1;
  while (exponent > 0) {
    if ((exponent & 1) != 0 && __builtin_mul_overflow(result, base, &result)) throw_overflow("**");
    exponent >>= 1;
    if (exponent > 0 && __builtin_mul_overflow(base, base, &base)) throw_overflow("**");
  }
  return result;
}

Value arithmetic(std::string_view op, const Value& a, const Value& b) {
  if (a.is_undefined()) throw_undefined(a);
  if (b.is_undefined()) throw_undefined(b);
  if (op == "+") {
    if (a.is_string() && b.is_string()) {
      check_string_size(a.as_string().size() + b.as_string().size());
      return Value(a.as_string() + b.as_string());
    }
    if (a.is_list() && b.is_list()) {
      check_list_size(a.as_list().size() + b.as_list().size());
      ValueList out = a.as_list();
      out.insert(out.end(), b.as_list().begin(), b.as_list().end());
      return Value(std::move(out));
    }
  }
  if (op == "*") {
    const Value* seq = a.is_string() || a.is_list() ? &a : (b.is_string() || b.is_list() ? &b : nullptr);
    const Value* count = seq == &a ? &b : &a;
    if (seq != nullptr && count->is_number() && count->kind() != ValueKind::kFloat) {
      int64_t n = std::max<int64_t>(0, count->as_int());
      // Sized before allocating: 'x' * 10**12 must fail, not exhaust memory.
      if (seq->is_string()) {
        size_t unit = seq->as_string().size();
        if (unit != 0) check_string_size(static_cast<uint64_t>(n) > kMaxStringBytes / unit ? kMaxStringBytes + 1 : unit * static_cast<size_t>(n));
        std::string out;
        if (unit != 0) out.reserve(unit * static_cast<size_t>(n));
        for (int64_t i = 0; unit != 0 && i < n; ++i) out += seq->as_string();
        return Value(std::move(out));
      }
      size_t unit = seq->as_list().size();
      if (unit != 0) check_list_size(static_cast<uint64_t>(n) > kMaxListItems / unit ? kMaxListItems + 1 : unit * static_cast<size_t>(n));
      ValueList out;
      for (int64_t i = 0; unit != 0 && i < n; ++i) out.insert(out.end(), seq->as_list().begin(), seq->as_list().end());
      return Value(std::move(out));
    }
  }
  if (!a.is_number() || !b.is_number()) type_error(op, a, b);
  bool use_float = a.kind() == ValueKind::kFloat || b.kind() == ValueKind::kFloat;
  if (op == "/") {
    if (b.as_double() == 0) throw_render_error("division by zero");
    return Value(a.as_double() / b.as_double());
  }
  if (op == "**") {
    if (!use_float && b.as_int() >= 0) return Value(int_power(a.as_int(), b.as_int()));
    if (a.as_double() == 0 && b.as_double() < 0) throw_render_error("0.0 cannot be raised to a negative power");
    return Value(std::pow(a.as_double(), b.as_double()));
  }
  if (use_float) {
    double x = a.as_double();
    double y = b.as_double();
    if (op == "+") return Value(x + y);
    if (op == "-") return Value(x - y);
    if (op == "*") return Value(x * y);
    if (y == 0) throw_render_error(op == "//" ? "float floor division by zero" : "float modulo");
    if (op == "//") return Value(std::floor(x / y));
    if (op == "%") return Value(x - std::floor(x / y) * y);
  } else {
    int64_t x = a.as_int();
    int64_t y = b.as_int();
    int64_t r = 0;
    if (op == "+") {
      if (__builtin_add_overflow(x, y, &r)) throw_overflow(op);
      return Value(r);
    }
    if (op == "-") {
      if (__builtin_sub_overflow(x, y, &r)) throw_overflow(op);
      return Value(r);
    }
    if (op == "*") {
      if (__builtin_mul_overflow(x, y, &r)) throw_overflow(op);
      return Value(r);
    }
    if (y == 0) throw_render_error(op == "//" ? "integer division or modulo by zero" : "integer modulo by zero");
    if (op == "//") return Value(floor_div(x, y));
    if (op == "%") return Value(floor_mod(x, y));
  }
  type_error(op, a, b);
}

// Normalises a Python index against a length; false when out of range.
bool normalise_index(int64_t& i, size_t size) {
  if (i < 0) i += static_cast<int64_t>(size);
  return i >= 0 && i < static_cast<int64_t>(size);
}

// ---- methods -------------------------------------------------------------------------

bool is_py_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

std::string strip_chars(const std::string& s, const Value* chars, bool left, bool right) {
  if (chars != nullptr && !chars->is_none() && !chars->is_string()) {
    throw_render_error("strip arg must be None or str");
  }
  auto strip_this = [&](char c) {
    if (chars == nullptr || chars->is_none()) return is_py_space(c);
    return chars->as_string().find(c) != std::string::npos;
  };
  size_t begin = 0;
  size_t end = s.size();
  if (left) {
    while (begin < end && strip_this(s[begin])) ++begin;
  }
  if (right) {
    while (end > begin && strip_this(s[end - 1])) --end;
  }
  return s.substr(begin, end - begin);
}

Value split(const std::string& s, const Value* sep, const Value* max_split) {
  int64_t limit = max_split != nullptr && max_split->is_number() ? max_split->as_int() : -1;
  ValueList out;
  if (sep == nullptr || sep->is_none()) {
    size_t i = 0;
    while (true) {
      while (i < s.size() && is_py_space(s[i])) ++i;
      if (i >= s.size()) break;
      if (limit >= 0 && static_cast<int64_t>(out.size()) == limit) {
        out.emplace_back(strip_chars(s.substr(i), nullptr, false, true));
        break;
      }
      size_t j = i;
      while (j < s.size() && !is_py_space(s[j])) ++j;
      check_list_size(out.size() + 1);  // before the items pile up, not after
      out.emplace_back(s.substr(i, j - i));
      i = j;
    }
    return Value(std::move(out));
  }
  if (!sep->is_string()) throw_render_error("must be str or None, not " + python_type_name(*sep));
  const std::string& delim = sep->as_string();
  if (delim.empty()) throw_render_error("empty separator");
  size_t start = 0;
  while (true) {
    size_t found = s.find(delim, start);
    if (found == std::string::npos || (limit >= 0 && static_cast<int64_t>(out.size()) == limit)) {
      out.emplace_back(s.substr(start));
      break;
    }
    check_list_size(out.size() + 2);
    out.emplace_back(s.substr(start, found - start));
    start = found + delim.size();
  }
  return Value(std::move(out));
}

std::string replace_all(const std::string& s, const std::string& from, const std::string& to, int64_t count) {
  if (from.empty()) return s;
  std::string out;
  size_t start = 0;
  int64_t done = 0;
  while (count < 0 || done < count) {
    size_t found = s.find(from, start);
    if (found == std::string::npos) break;
    append_checked(out, std::string_view(s).substr(start, found - start));
    append_checked(out, to);
    start = found + from.size();
    ++done;
  }
  append_checked(out, std::string_view(s).substr(start));
  return out;
}

const std::string& string_arg(const CallArgs& args, size_t index, std::string_view method) {
  const Value* v = args.get(index, "");
  if (v == nullptr || !v->is_string()) throw_render_error(std::string(method) + "() needs a string argument");
  return v->as_string();
}

bool prefix_test(const std::string& s, const Value& arg, bool prefix) {
  auto one = [&](const Value& p) {
    if (!p.is_string()) throw_render_error("startswith/endswith needs a string");
    const std::string& x = p.as_string();
    if (x.size() > s.size()) return false;
    return prefix ? s.compare(0, x.size(), x) == 0 : s.compare(s.size() - x.size(), x.size(), x) == 0;
  };
  if (arg.is_list()) return std::any_of(arg.as_list().begin(), arg.as_list().end(), one);
  return one(arg);
}

// str.format with "{}", "{0}" and "{name}" fields and "{{"/"}}" escapes; no format specs.
std::string python_format(const std::string& fmt, const CallArgs& args) {
  std::string out;
  size_t auto_index = 0;
  bool manual_numbering = false;
  for (size_t i = 0; i < fmt.size(); ++i) {
    char c = fmt[i];
    if ((c == '{' || c == '}') && i + 1 < fmt.size() && fmt[i + 1] == c) {
      out += c;
      ++i;
      continue;
    }
    if (c == '}') throw_render_error("Single '}' encountered in format string");
    if (c != '{') {
      out += c;
      continue;
    }
    size_t close = fmt.find('}', i);
    if (close == std::string::npos) throw_render_error("Single '{' encountered in format string");
    std::string field = fmt.substr(i + 1, close - i - 1);
    if (field.find_first_of(":!") != std::string::npos) throw_render_error("format specs are not supported");
    const Value* v = nullptr;
    bool numbered = !field.empty() && field.find_first_not_of("0123456789") == std::string::npos;
    if (field.empty() ? manual_numbering : (numbered && auto_index > 0)) {
      throw_render_error("cannot switch between manual and automatic field numbering in format string");
    }
    manual_numbering = manual_numbering || numbered;
    if (field.empty()) {
      v = args.get(auto_index++, "");
    } else if (numbered) {
      size_t index = 0;
      auto [ptr, ec] = std::from_chars(field.data(), field.data() + field.size(), index);
      // std::stoul would throw out_of_range past the C++ error path: '{99999999999999999999}'.
      v = ec == std::errc() && ptr == field.data() + field.size() ? args.get(index, "") : nullptr;
    } else {
      v = args.keyword(field);
    }
    if (v == nullptr) throw_render_error("format: no argument for field '{" + field + "}'");
    append_checked(out, v->to_str());
    i = close;
  }
  return out;
}

constexpr std::string_view kStringMethods[] = {"strip", "lstrip", "rstrip", "startswith", "endswith", "split",
                                               "upper", "lower", "title", "capitalize", "replace", "join",
                                               "find", "count", "isdigit", "isspace", "format"};
constexpr std::string_view kDictMethods[] = {"items", "keys", "values", "get"};

}  // namespace

void throw_undefined(const Value& v) { throw_render_error(undefined_message(v)); }

const Value* CallArgs::get(size_t index, std::string_view name) const {
  if (index < positional.size()) return &positional[index];
  if (!name.empty()) {
    for (const auto& [k, v] : named) {
      if (k == name) return &v;
    }
  }
  return nullptr;
}

const Value* CallArgs::keyword(std::string_view name) const {
  for (const auto& [k, v] : named) {
    if (k == name) return &v;
  }
  return nullptr;
}

Value binary_operation(std::string_view op, const Value& a, const Value& b) {
  if (op == "==") return Value(a.equals(b));
  if (op == "!=") return Value(!a.equals(b));
  if (op == "<") return Value(compare_values(a, b, op) < 0);
  if (op == ">") return Value(compare_values(a, b, op) > 0);
  if (op == "<=") return Value(compare_values(a, b, op) <= 0);
  if (op == ">=") return Value(compare_values(a, b, op) >= 0);
  if (op == "in") return Value(contains(b, a));
  if (op == "not in") return Value(!contains(b, a));
  if (op == "~") {
    std::string out = a.to_str();
    append_checked(out, b.to_str());
    return Value(std::move(out));
  }
  return arithmetic(op, a, b);
}

ValueList iterate(const Value& v) {
  switch (v.kind()) {
    case ValueKind::kUndefined: return {};
    case ValueKind::kList: charge_steps(static_cast<int64_t>(v.as_list().size())); return v.as_list();
    case ValueKind::kDict: {
      ValueList keys;
      for (const auto& [k, e] : v.as_dict().entries) keys.emplace_back(k);
      return keys;
    }
    case ValueKind::kString: {
      const std::string& s = v.as_string();
      charge_steps(static_cast<int64_t>(s.size()));
      std::vector<size_t> offsets = utf8_offsets(s);
      check_list_size(offsets.size() - 1);  // a Value per character: check before building
      ValueList chars;
      for (size_t i = 0; i + 1 < offsets.size(); ++i) chars.emplace_back(s.substr(offsets[i], offsets[i + 1] - offsets[i]));
      return chars;
    }
    default: throw_render_error("'" + v.type_repr() + "' is not iterable");
  }
}

Value get_attribute(const Value& obj, std::string_view name) {
  if (obj.is_undefined()) throw_undefined(obj);
  auto bind = [&] { return Value::callable(std::string(name), std::make_shared<const Value>(obj)); };
  if (obj.is_string()) {
    for (std::string_view m : kStringMethods) {
      if (m == name) return bind();
    }
  }
  if (obj.is_dict()) {
    if (!obj.as_dict().is_namespace) {
      for (std::string_view m : kDictMethods) {
        if (m == name) return bind();
      }
    }
    if (const Value* v = obj.as_dict().find(name)) return *v;
  }
  std::string who = obj.is_none() ? "'None'" : "'" + obj.type_repr() + "'";
  return Value::undefined(who + " has no attribute '" + std::string(name) + "'");
}

Value get_item(const Value& obj, const Value& key) {
  if (obj.is_undefined()) throw_undefined(obj);
  if (obj.is_dict() && key.is_string()) {
    if (const Value* v = obj.as_dict().find(key.as_string())) return *v;
  }
  if ((obj.is_list() || obj.is_string()) && key.is_number() && key.kind() != ValueKind::kFloat) {
    int64_t i = key.as_int();
    if (obj.is_list()) {
      if (normalise_index(i, obj.as_list().size())) return obj.as_list()[static_cast<size_t>(i)];
    } else {
      std::vector<size_t> offsets = utf8_offsets(obj.as_string());
      if (normalise_index(i, offsets.size() - 1)) {
        size_t u = static_cast<size_t>(i);
        return Value(obj.as_string().substr(offsets[u], offsets[u + 1] - offsets[u]));
      }
    }
    return Value::undefined("'" + obj.type_repr() + "' has no element " + key.repr());
  }
  if (key.is_string()) {
    Value attr = get_attribute(obj, key.as_string());
    if (!attr.is_undefined()) return attr;
  }
  std::string who = obj.is_none() ? "'None'" : "'" + obj.type_repr() + "'";
  return Value::undefined(who + " has no attribute " + key.repr());
}

Value get_slice(const Value& obj, const Value& start_v, const Value& stop_v, const Value& step_v) {
  if (obj.is_undefined()) throw_undefined(obj);
  auto bound = [](const Value& v, const char* what) -> std::optional<int64_t> {
    if (v.is_undefined() || v.is_none()) return std::nullopt;
    if (!v.is_number() || v.kind() == ValueKind::kFloat) {
      throw_render_error(std::string("slice ") + what + " must be an integer or None");
    }
    return v.as_int();
  };
  int64_t step = bound(step_v, "step").value_or(1);
  if (step == 0) throw_render_error("slice step cannot be zero");
  std::vector<size_t> offsets;
  int64_t size = 0;
  if (obj.is_list()) {
    size = static_cast<int64_t>(obj.as_list().size());
  } else if (obj.is_string()) {
    offsets = utf8_offsets(obj.as_string());
    size = static_cast<int64_t>(offsets.size()) - 1;
  } else {
    throw_render_error("'" + obj.type_repr() + "' is not subscriptable");
  }
  // Python's slice.indices().
  auto clamp = [&](std::optional<int64_t> v, int64_t dflt) {
    if (!v) return dflt;
    int64_t i = *v;
    if (i < 0) i += size;
    if (step > 0) return std::clamp<int64_t>(i, 0, size);
    return std::clamp<int64_t>(i, -1, size - 1);
  };
  int64_t start = clamp(bound(start_v, "start"), step > 0 ? 0 : size - 1);
  int64_t stop = clamp(bound(stop_v, "stop"), step > 0 ? size : -1);
  std::vector<size_t> picked;
  // Stop before stepping past the end: i + step may not fit in int64 ([1, 2][::2**62]).
  for (int64_t i = start; step > 0 ? i < stop : i > stop;) {
    picked.push_back(static_cast<size_t>(i));
    if (step > 0 ? step >= stop - i : step <= stop - i) break;
    i += step;
  }
  if (obj.is_list()) {
    ValueList out;
    for (size_t i : picked) out.push_back(obj.as_list()[i]);
    return Value(std::move(out));
  }
  std::string out;
  for (size_t i : picked) out += obj.as_string().substr(offsets[i], offsets[i + 1] - offsets[i]);
  return Value(std::move(out));
}

Value call_method(const Callable& method, const CallArgs& args) {
  const Value& self = *method.self;
  const std::string& name = method.name;
  if (self.is_string()) {
    const std::string& s = self.as_string();
    if (name == "strip") return Value(strip_chars(s, args.get(0, "chars"), true, true));
    if (name == "lstrip") return Value(strip_chars(s, args.get(0, "chars"), true, false));
    if (name == "rstrip") return Value(strip_chars(s, args.get(0, "chars"), false, true));
    if (name == "upper") return Value(ascii_upper(s));
    if (name == "lower") return Value(ascii_lower(s));
    if (name == "title") return Value(title_case(s));
    if (name == "capitalize") return Value(capitalize(s));
    if (name == "split") return split(s, args.get(0, "sep"), args.get(1, "maxsplit"));
    if (name == "startswith" || name == "endswith") {
      const Value* arg = args.get(0, "");
      if (arg == nullptr) throw_render_error(name + "() takes at least 1 argument");
      return Value(prefix_test(s, *arg, name == "startswith"));
    }
    if (name == "replace") {
      const Value* count = args.get(2, "count");
      return Value(replace_all(s, string_arg(args, 0, name), string_arg(args, 1, name),
                               count != nullptr && count->is_number() ? count->as_int() : -1));
    }
    if (name == "find") {
      size_t found = s.find(string_arg(args, 0, name));
      return Value(found == std::string::npos ? int64_t{-1} : static_cast<int64_t>(utf8_offsets(s.substr(0, found)).size() - 1));
    }
    if (name == "count") {
      const std::string& needle = string_arg(args, 0, name);
      int64_t n = 0;
      for (size_t at = s.find(needle); !needle.empty() && at != std::string::npos; at = s.find(needle, at + needle.size())) ++n;
      return Value(n);
    }
    if (name == "join") {
      const Value* items = args.get(0, "");
      if (items == nullptr) throw_render_error("join() takes exactly one argument");
      std::string out;
      bool first = true;
      for (const Value& v : iterate(*items)) {
        if (!v.is_string()) throw_render_error("sequence item: expected str instance, " + v.type_repr() + " found");
        if (!first) append_checked(out, s);
        append_checked(out, v.as_string());
        first = false;
      }
      return Value(std::move(out));
    }
    if (name == "format") return Value(python_format(s, args));
    if (name == "isdigit" || name == "isspace") {
      bool all = !s.empty();
      for (char c : s) all = all && (name == "isdigit" ? (c >= '0' && c <= '9') : is_py_space(c));
      return Value(all);
    }
  }
  if (self.is_dict()) {
    const ValueDict& d = self.as_dict();
    if (name == "items") {
      ValueList out;
      for (const auto& [k, v] : d.entries) out.push_back(Value::tuple(ValueList{Value(k), v}));
      return Value(std::move(out));
    }
    if (name == "keys") {
      ValueList out;
      for (const auto& [k, v] : d.entries) out.emplace_back(k);
      return Value(std::move(out));
    }
    if (name == "values") {
      ValueList out;
      for (const auto& [k, v] : d.entries) out.push_back(v);
      return Value(std::move(out));
    }
    if (name == "get") {
      const Value* key = args.get(0, "key");
      if (key == nullptr) throw_render_error("get() takes at least 1 argument");
      if (key->is_string()) {
        if (const Value* v = d.find(key->as_string())) return *v;
      }
      const Value* dflt = args.get(1, "default");
      return dflt != nullptr ? *dflt : Value::none();
    }
  }
  throw_render_error("'" + self.type_repr() + "' has no method '" + name + "'");
}

}  // namespace tessera::chat_template
