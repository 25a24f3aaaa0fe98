// Filters and tests: the subset real chat templates use. Anything else is refused at load
// (is_known_filter / is_known_test), never silently rendered wrong.
#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <unordered_set>

#include "gateway/chat_template/builtins.h"
#include "gateway/chat_template/render_limits.h"
#include "gateway/chat_template/template_error.h"

namespace tessera::chat_template {

std::string ascii_upper(std::string s) {
  for (char& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return s;
}

std::string ascii_lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string title_case(const std::string& s) {
  std::string out = s;
  bool prev_cased = false;
  for (char& c : out) {
    unsigned char u = static_cast<unsigned char>(c);
    if (std::isalpha(u)) {
      c = static_cast<char>(prev_cased ? std::tolower(u) : std::toupper(u));
      prev_cased = true;
    } else {
      prev_cased = u >= 0x80 && prev_cased;  // keep words with non-ASCII letters together
    }
  }
  return out;
}

std::string capitalize(const std::string& s) {
  std::string out = ascii_lower(s);
  if (!out.empty()) out[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(out[0])));
  return out;
}

namespace {

constexpr std::string_view kFilters[] = {
    "abs",   "capitalize", "count",  "d",       "default", "dictsort", "first",  "float", "indent",
    "int",   "items",      "join",   "last",    "length",  "list",   "lower",     "map", "max", "min",
    "reject", "rejectattr", "replace", "reverse", "safe",   "select", "selectattr", "sort",
    "string", "title",     "tojson", "trim",    "unique",  "upper",  "wordcount"};

constexpr std::string_view kTests[] = {
    "boolean", "callable", "defined", "divisibleby", "eq", "equalto", "even", "false", "float",
    "ge",      "gt",       "in",      "integer",     "iterable", "le", "lower", "lt", "mapping",
    "ne",      "none",     "number",  "odd",         "sameas", "sequence", "string", "true",
    "undefined", "upper",  "==",      "!=",          "<",  ">",  "<=", ">=", "greaterthan", "lessthan"};

const Value& required(const CallArgs& args, size_t index, std::string_view name, std::string_view filter) {
  const Value* v = args.get(index, name);
  if (v == nullptr) throw_render_error(std::string(filter) + " is missing its '" + std::string(name) + "' argument");
  return *v;
}

bool py_isspace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

std::string trim(const std::string& s) {
  size_t b = 0;
  size_t e = s.size();
  while (b < e && py_isspace(s[b])) ++b;
  while (e > b && py_isspace(s[e - 1])) --e;
  return s.substr(b, e - b);
}

// Dotted attribute paths ("function.name") as Jinja's attrgetter resolves them.
Value attribute_path(const Value& item, const std::string& path) {
  Value current = item;
  size_t start = 0;
  while (true) {
    size_t dot = path.find('.', start);
    std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (current.is_undefined()) return current;
    current = get_item(current, Value(part));
    if (dot == std::string::npos) return current;
    start = dot + 1;
  }
}

// select/reject/selectattr/rejectattr: args[first_test_arg] names the test; the rest are its args.
Value select_items(const Value& input, const CallArgs& args, bool by_attribute, bool keep_matching) {
  size_t next = 0;
  std::string attribute;
  if (by_attribute) attribute = required(args, next++, "attribute", "selectattr").to_str();
  const Value* test = args.get(next++, "");
  CallArgs test_args;
  for (size_t i = next; i < args.positional.size(); ++i) test_args.positional.push_back(args.positional[i]);
  ValueList out;
  if (!input.truthy()) return Value(std::move(out));  // Jinja skips falsy input (None) entirely
  for (const Value& item : iterate(input)) {
    Value subject = by_attribute ? attribute_path(item, attribute) : item;
    bool ok = test == nullptr ? subject.truthy() : apply_test(test->to_str(), subject, test_args);
    if (ok == keep_matching) out.push_back(item);
  }
  return Value(std::move(out));
}

void append_json_string(std::string& out, const std::string& s, bool ensure_ascii) {
  out += '"';
  for (size_t i = 0; i < s.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    switch (c) {
      case '"': out += "\\\""; continue;
      case '\\': out += "\\\\"; continue;
      case '\n': out += "\\n"; continue;
      case '\r': out += "\\r"; continue;
      case '\t': out += "\\t"; continue;
      case '\b': out += "\\b"; continue;
      case '\f': out += "\\f"; continue;
      default: break;
    }
    char buf[16];
    if (c < 0x20 || (ensure_ascii && c == 0x7f)) {
      std::snprintf(buf, sizeof(buf), "\\u%04x", c);
      out += buf;
    } else if (c >= 0x80 && ensure_ascii) {
      int n = c >= 0xF0 ? 3 : (c >= 0xE0 ? 2 : 1);
      uint32_t cp = c & (0x3F >> n);
      for (int k = 0; k < n && i + 1 < s.size(); ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[++i]) & 0x3F);
      if (cp >= 0x10000) {
        cp -= 0x10000;
        std::snprintf(buf, sizeof(buf), "\\u%04x\\u%04x", 0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF));
      } else {
        std::snprintf(buf, sizeof(buf), "\\u%04x", cp);
      }
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  out += '"';
}

void append_json(std::string& out, const Value& v, int indent, bool sort_keys, bool ensure_ascii, int depth) {
  auto newline = [&](int level) {
    size_t pad = static_cast<size_t>(indent) * static_cast<size_t>(level);
    check_string_size(out.size() + 1 + pad);
    out += '\n';
    out.append(pad, ' ');
  };
  const char* item_sep = indent >= 0 ? "," : ", ";
  switch (v.kind()) {
    case ValueKind::kNone: out += "null"; return;
    case ValueKind::kBool: out += v.as_bool() ? "true" : "false"; return;
    case ValueKind::kInt: out += std::to_string(v.as_int()); return;
    case ValueKind::kFloat: {
      double d = v.as_double();
      out += std::isnan(d) ? "NaN" : (std::isinf(d) ? (d > 0 ? "Infinity" : "-Infinity") : python_float_repr(d));
      return;
    }
    case ValueKind::kString: append_json_string(out, v.as_string(), ensure_ascii); return;
    case ValueKind::kList: {
      const ValueList& list = v.as_list();
      if (list.empty()) {
        out += "[]";
        return;
      }
      out += '[';
      for (size_t i = 0; i < list.size(); ++i) {
        if (i) out += item_sep;
        if (indent >= 0) newline(depth + 1);
        append_json(out, list[i], indent, sort_keys, ensure_ascii, depth + 1);
        check_string_size(out.size());  // [s] * 1000000 is cheap to hold, not to print
      }
      if (indent >= 0) newline(depth);
      out += ']';
      return;
    }
    case ValueKind::kDict: {
      std::vector<const std::pair<std::string, Value>*> entries;
      for (const auto& e : v.as_dict().entries) entries.push_back(&e);
      if (sort_keys) {
        std::stable_sort(entries.begin(), entries.end(), [](auto* a, auto* b) { return a->first < b->first; });
      }
      if (entries.empty()) {
        out += "{}";
        return;
      }
      out += '{';
      for (size_t i = 0; i < entries.size(); ++i) {
        if (i) out += item_sep;
        if (indent >= 0) newline(depth + 1);
        append_json_string(out, entries[i]->first, ensure_ascii);
        out += ": ";
        append_json(out, entries[i]->second, indent, sort_keys, ensure_ascii, depth + 1);
        check_string_size(out.size());
      }
      if (indent >= 0) newline(depth);
      out += '}';
      return;
    }
    default:
      throw_render_error("Object of type " + v.type_repr() + " is not JSON serializable");
  }
}

std::string indent_lines(const std::string& s, const Value* width, bool first, bool blank) {
  int64_t num_spaces = width == nullptr || width->is_string() ? 0 : std::max<int64_t>(0, width->as_int());
  check_string_size(static_cast<uint64_t>(num_spaces));  // indent(10**12)
  std::string pad = width == nullptr ? "    "
                    : width->is_string() ? width->as_string()
                                         : std::string(static_cast<size_t>(num_spaces), ' ');
  std::vector<std::string> lines;
  size_t start = 0;
  while (start < s.size()) {
    size_t nl = s.find('\n', start);
    if (nl == std::string::npos) {
      lines.push_back(s.substr(start));
      break;
    }
    std::string line = s.substr(start, nl - start);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines.push_back(line);
    start = nl + 1;
  }
  if (lines.empty()) lines.emplace_back();
  std::string out = first ? pad + lines[0] : lines[0];
  for (size_t i = 1; i < lines.size(); ++i) {
    append_checked(out, "\n");
    if (blank || !lines[i].empty()) append_checked(out, pad);
    append_checked(out, lines[i]);
  }
  return out;
}

// int(d), or nullopt where Python raises (inf, nan) or would need a big int.
std::optional<int64_t> float_to_int(double d) {
  // 2**63 is exact as a double; every double below it truncates into int64.
  if (!(d > -9223372036854775808.0 - 1024 && d < 9223372036854775808.0)) return std::nullopt;
  return static_cast<int64_t>(d);
}

Value to_int(const Value& v, const Value* dflt) {
  Value fallback = dflt != nullptr ? *dflt : Value(int64_t{0});
  if (v.kind() == ValueKind::kFloat) {
    std::optional<int64_t> i = float_to_int(v.as_double());
    return i ? Value(*i) : fallback;
  }
  if (v.is_number()) return Value(v.as_int());
  if (v.is_string()) {
    std::string s = trim(v.as_string());
    char* end = nullptr;
    errno = 0;
    long long i = std::strtoll(s.c_str(), &end, 10);
    if (!s.empty() && end == s.c_str() + s.size()) {
      // Python would return a big int; strtoll would clamp it silently.
      return errno == ERANGE ? fallback : Value(static_cast<int64_t>(i));
    }
    double d = std::strtod(s.c_str(), &end);
    if (!s.empty() && end == s.c_str() + s.size()) {
      std::optional<int64_t> f = float_to_int(d);
      return f ? Value(*f) : fallback;
    }
  }
  return fallback;
}

}  // namespace

bool is_known_filter(std::string_view name) {
  return std::find(std::begin(kFilters), std::end(kFilters), name) != std::end(kFilters);
}

bool is_known_test(std::string_view name) {
  return std::find(std::begin(kTests), std::end(kTests), name) != std::end(kTests);
}

std::string to_json(const Value& v, int indent, bool sort_keys) {
  std::string out;
  append_json(out, v, indent, sort_keys, /*ensure_ascii=*/false, 0);
  return out;
}

Value apply_filter(std::string_view name, const Value& input, const CallArgs& args) {
  if (name == "default" || name == "d") {
    const Value* boolean = args.get(1, "boolean");
    bool use_default = input.is_undefined() || (boolean != nullptr && boolean->truthy() && !input.truthy());
    if (!use_default) return input;
    const Value* dflt = args.get(0, "default_value");
    return dflt != nullptr ? *dflt : Value(std::string());
  }
  if (name == "tojson") {
    const Value* indent = args.get(0, "indent");
    const Value* sort_keys = args.keyword("sort_keys");
    const Value* ascii = args.keyword("ensure_ascii");
    const Value* separators = args.keyword("separators");
    if (separators != nullptr && !separators->is_none()) throw_render_error("tojson: separators are not supported");
    int64_t width = indent != nullptr && indent->is_number() ? indent->as_int() : -1;
    check_string_size(static_cast<uint64_t>(std::max<int64_t>(width, 0)));  // tojson(indent=10**12)
    std::string out;
    append_json(out, input, static_cast<int>(width),
                sort_keys != nullptr && sort_keys->truthy(), ascii != nullptr && ascii->truthy(), 0);
    return Value(std::move(out));
  }
  if (name == "safe") return input;
  if (name == "string") return Value(input.to_str());
  if (name == "trim") {
    const Value* chars = args.get(0, "chars");
    if (chars == nullptr || chars->is_none()) return Value(trim(input.to_str()));
    std::string s = input.to_str();
    size_t b = s.find_first_not_of(chars->to_str());
    if (b == std::string::npos) return Value(std::string());
    return Value(s.substr(b, s.find_last_not_of(chars->to_str()) - b + 1));
  }
  if (name == "upper") return Value(ascii_upper(input.to_str()));
  if (name == "lower") return Value(ascii_lower(input.to_str()));
  if (name == "title") return Value(title_case(input.to_str()));
  if (name == "capitalize") return Value(capitalize(input.to_str()));
  if (name == "length" || name == "count") {
    if (input.is_string()) return Value(static_cast<int64_t>(utf8_length(input.as_string())));
    if (input.is_list()) return Value(static_cast<int64_t>(input.as_list().size()));
    if (input.is_dict()) return Value(static_cast<int64_t>(input.as_dict().entries.size()));
    if (input.is_undefined()) return Value(int64_t{0});
    throw_render_error("object of type '" + input.type_repr() + "' has no len()");
  }
  if (name == "wordcount") {
    int64_t n = 0;
    bool in_word = false;
    for (char c : input.to_str()) {
      bool word = std::isalnum(static_cast<unsigned char>(c)) || c == '_' || (static_cast<unsigned char>(c) >= 0x80);
      if (word && !in_word) ++n;
      in_word = word;
    }
    return Value(n);
  }
  if (name == "list") return Value(iterate(input));
  if (name == "items") {
    if (input.is_undefined()) return Value(ValueList{});
    if (!input.is_dict()) throw_render_error("items filter needs a mapping, got " + input.type_repr());
    ValueList out;
    for (const auto& [k, v] : input.as_dict().entries) out.push_back(Value::tuple(ValueList{Value(k), v}));
    return Value(std::move(out));
  }
  if (name == "first" || name == "last") {
    ValueList items = iterate(input);
    if (items.empty()) return Value::undefined("No " + std::string(name) + " item, sequence was empty.");
    return name == "first" ? items.front() : items.back();
  }
  if (name == "reverse") {
    if (input.is_string()) return get_slice(input, Value(), Value(), Value(int64_t{-1}));
    ValueList items = iterate(input);
    std::reverse(items.begin(), items.end());
    return Value(std::move(items));
  }
  if (name == "join") {
    const Value* sep = args.get(0, "d");
    const Value* attribute = args.get(1, "attribute");
    std::string out;
    bool first = true;
    for (const Value& item : iterate(input)) {
      if (!first && sep != nullptr) append_checked(out, sep->to_str());
      append_checked(out, (attribute != nullptr ? attribute_path(item, attribute->to_str()) : item).to_str());
      first = false;
    }
    return Value(std::move(out));
  }
  if (name == "map") {
    const Value* attribute = args.keyword("attribute");
    ValueList out;
    if (!input.truthy()) return Value(std::move(out));  // as select: None maps to nothing
    if (attribute != nullptr) {
      const Value* dflt = args.keyword("default");
      for (const Value& item : iterate(input)) {
        Value v = attribute_path(item, attribute->to_str());
        out.push_back(v.is_undefined() && dflt != nullptr ? *dflt : v);
      }
      return Value(std::move(out));
    }
    std::string filter = required(args, 0, "filter", "map").to_str();
    if (!is_known_filter(filter)) throw_render_error("map: unknown filter '" + filter + "'");
    CallArgs rest;
    rest.positional.assign(args.positional.begin() + 1, args.positional.end());
    rest.named = args.named;
    for (const Value& item : iterate(input)) out.push_back(apply_filter(filter, item, rest));
    return Value(std::move(out));
  }
  if (name == "select") return select_items(input, args, false, true);
  if (name == "reject") return select_items(input, args, false, false);
  if (name == "selectattr") return select_items(input, args, true, true);
  if (name == "rejectattr") return select_items(input, args, true, false);
  if (name == "unique") {
    // Jinja keeps a set of keys: case-insensitive strings by default, unhashable lists and
    // dicts refused. A set, not pairwise ==, so 100k items stay linear.
    const Value* case_sensitive = args.get(0, "case_sensitive");
    const Value* attribute = args.get(1, "attribute");
    bool fold_case = case_sensitive == nullptr || !case_sensitive->truthy();
    std::unordered_set<std::string> seen;
    ValueList out;
    for (const Value& item : iterate(input)) {
      Value k = attribute != nullptr ? attribute_path(item, attribute->to_str()) : item;
      std::string key;
      if (k.is_string()) {
        key = "s" + (fold_case ? ascii_lower(k.as_string()) : k.as_string());
      } else if (k.kind() == ValueKind::kFloat) {
        std::optional<int64_t> i = float_to_int(k.as_double());
        key = i && static_cast<double>(*i) == k.as_double() ? "i" + std::to_string(*i) : "f" + k.repr();
      } else if (k.is_number()) {
        key = "i" + std::to_string(k.as_int());  // True == 1 == 1.0, as in a Python set
      } else if (k.is_none()) {
        key = "n";
      } else {
        throw_render_error("unhashable type: '" + std::string(k.is_list() ? "list" : "dict") + "'");
      }
      if (seen.insert(std::move(key)).second) out.push_back(item);
    }
    return Value(std::move(out));
  }
  if (name == "dictsort") {
    if (!input.is_dict()) throw_render_error("dictsort needs a mapping, got " + input.type_repr());
    const Value* case_sensitive = args.get(0, "case_sensitive");
    const Value* by = args.get(1, "by");
    const Value* reverse = args.get(2, "reverse");
    bool by_value = by != nullptr && by->to_str() == "value";
    if (by != nullptr && !by_value && by->to_str() != "key") throw_render_error("dictsort: by must be 'key' or 'value'");
    ValueList items;
    for (const auto& [k, v] : input.as_dict().entries) items.push_back(Value::tuple(ValueList{Value(k), v}));
    auto key = [&](const Value& item) {
      Value k = item.as_list()[by_value ? 1 : 0];
      if (k.is_string() && !(case_sensitive != nullptr && case_sensitive->truthy())) return Value(ascii_lower(k.as_string()));
      return k;
    };
    std::stable_sort(items.begin(), items.end(), [&](const Value& a, const Value& b) {
      return binary_operation("<", key(a), key(b)).as_bool();
    });
    if (reverse != nullptr && reverse->truthy()) std::reverse(items.begin(), items.end());
    return Value(std::move(items));
  }
  if (name == "min" || name == "max") {
    const Value* case_sensitive = args.get(0, "case_sensitive");
    const Value* attribute = args.get(1, "attribute");
    ValueList items = iterate(input);
    if (items.empty()) return Value::undefined("No aggregated item, sequence was empty.");
    auto key = [&](const Value& v) {
      Value k = attribute != nullptr ? attribute_path(v, attribute->to_str()) : v;
      if (k.is_string() && !(case_sensitive != nullptr && case_sensitive->truthy())) return Value(ascii_lower(k.as_string()));
      return k;
    };
    const Value* best = &items[0];
    for (const Value& item : items) {
      bool better = binary_operation(name == "min" ? "<" : ">", key(item), key(*best)).as_bool();
      if (better) best = &item;
    }
    return *best;
  }
  if (name == "sort") {
    const Value* reverse = args.get(0, "reverse");
    const Value* case_sensitive = args.get(1, "case_sensitive");
    const Value* attribute = args.get(2, "attribute");
    ValueList items = iterate(input);
    auto key = [&](const Value& v) {
      Value k = attribute != nullptr ? attribute_path(v, attribute->to_str()) : v;
      if (k.is_string() && !(case_sensitive != nullptr && case_sensitive->truthy())) return Value(ascii_lower(k.as_string()));
      return k;
    };
    std::stable_sort(items.begin(), items.end(), [&](const Value& a, const Value& b) {
      return binary_operation("<", key(a), key(b)).as_bool();
    });
    if (reverse != nullptr && reverse->truthy()) std::reverse(items.begin(), items.end());
    return Value(std::move(items));
  }
  if (name == "replace") {
    std::string s = input.to_str();
    std::string from = required(args, 0, "old", "replace").to_str();
    std::string to = required(args, 1, "new", "replace").to_str();
    return call_method(Callable{"replace", std::make_shared<const Value>(Value(s))},
                       CallArgs{{Value(from), Value(to)}, {}});
  }
  if (name == "indent") {
    const Value* first = args.get(1, "first");
    const Value* blank = args.get(2, "blank");
    return Value(indent_lines(input.to_str(), args.get(0, "width"), first != nullptr && first->truthy(),
                              blank != nullptr && blank->truthy()));
  }
  if (name == "int") return to_int(input, args.get(0, "default"));
  if (name == "float") {
    if (input.is_number()) return Value(input.as_double());
    if (input.is_string()) {
      std::string s = trim(input.as_string());
      char* end = nullptr;
      double d = std::strtod(s.c_str(), &end);
      if (!s.empty() && end == s.c_str() + s.size()) return Value(d);
    }
    const Value* dflt = args.get(0, "default");
    return dflt != nullptr ? *dflt : Value(0.0);
  }
  if (name == "abs") {
    if (input.kind() == ValueKind::kFloat) return Value(std::fabs(input.as_double()));
    if (input.is_number()) {
      return input.as_int() < 0 ? binary_operation("-", Value(int64_t{0}), input) : Value(input.as_int());
    }
    throw_render_error("bad operand type for abs(): '" + input.type_repr() + "'");
  }
  throw_render_error("filter '" + std::string(name) + "' is not implemented");
}

bool apply_test(std::string_view name, const Value& v, const CallArgs& args) {
  auto arg = [&]() -> const Value& { return required(args, 0, "other", name); };
  if (name == "defined") return !v.is_undefined();
  if (name == "undefined") return v.is_undefined();
  if (name == "none") return v.is_none();
  if (name == "true") return v.kind() == ValueKind::kBool && v.as_bool();
  if (name == "false") return v.kind() == ValueKind::kBool && !v.as_bool();
  if (name == "boolean") return v.kind() == ValueKind::kBool;
  if (name == "string") return v.is_string();
  if (name == "mapping") return v.is_dict();
  if (name == "iterable") return v.is_string() || v.is_list() || v.is_dict();
  if (name == "sequence") return v.is_string() || v.is_list() || v.is_dict();
  if (name == "number") return v.is_number();
  if (name == "integer") return v.kind() == ValueKind::kInt;
  if (name == "float") return v.kind() == ValueKind::kFloat;
  if (name == "callable") return v.kind() == ValueKind::kCallable;
  if (name == "lower") return v.is_string() && ascii_lower(v.as_string()) == v.as_string();
  if (name == "upper") return v.is_string() && ascii_upper(v.as_string()) == v.as_string();
  if (name == "odd" || name == "even") {
    // Jinja: value % 2 == 1 (odd), value % 2 == 0 (even), in Python arithmetic (3.0 is odd).
    if (!v.is_number()) throw_render_error("odd/even need a number");
    Value r = binary_operation("%", v, Value(int64_t{2}));
    return r.equals(Value(int64_t{name == "odd" ? 1 : 0}));
  }
  if (name == "divisibleby") {
    // Jinja: value % num == 0; INT64_MIN % -1 traps in C++, so through Python's %.
    return binary_operation("%", v, arg()).equals(Value(int64_t{0}));
  }
  if (name == "equalto" || name == "eq" || name == "==") return v.equals(arg());
  if (name == "ne" || name == "!=") return !v.equals(arg());
  if (name == "sameas") {
    const Value& o = arg();
    if (v.kind() != o.kind()) return false;
    return v.is_none() || v.is_undefined() || v.equals(o);
  }
  if (name == "lt" || name == "<" || name == "lessthan") return binary_operation("<", v, arg()).as_bool();
  if (name == "gt" || name == ">" || name == "greaterthan") return binary_operation(">", v, arg()).as_bool();
  if (name == "le" || name == "<=") return binary_operation("<=", v, arg()).as_bool();
  if (name == "ge" || name == ">=") return binary_operation(">=", v, arg()).as_bool();
  if (name == "in") return binary_operation("in", v, arg()).as_bool();
  throw_render_error("test '" + std::string(name) + "' is not implemented");
}

}  // namespace tessera::chat_template
