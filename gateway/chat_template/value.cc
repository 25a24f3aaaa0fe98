#include "gateway/chat_template/value.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <limits>

#include "gateway/chat_template/render_limits.h"
#include "gateway/chat_template/template_error.h"

namespace tessera::chat_template {

const Value* ValueDict::find(std::string_view key) const {
  for (const auto& [k, v] : entries) {
    if (k == key) return &v;
  }
  return nullptr;
}

void ValueDict::set(std::string key, Value value) {
  for (auto& [k, v] : entries) {
    if (k == key) {
      v = std::move(value);
      return;
    }
  }
  entries.emplace_back(std::move(key), std::move(value));
}

Value Value::undefined(std::string hint) {
  Value v;
  v.string_ = std::make_shared<const std::string>(std::move(hint));
  return v;
}

Value Value::none() {
  Value v;
  v.kind_ = ValueKind::kNone;
  return v;
}

Value::Value(bool b) : kind_(ValueKind::kBool), bool_(b), int_(b ? 1 : 0) {}
Value::Value(int64_t i) : kind_(ValueKind::kInt), int_(i) {}
Value::Value(double d) : kind_(ValueKind::kFloat), float_(d) {}
Value::Value(std::string s) : kind_(ValueKind::kString) {
  check_string_size(s.size());
  string_ = std::make_shared<const std::string>(std::move(s));
}

namespace {

void check_depth(int depth) {
  if (depth > kMaxValueDepth) {
    throw_limit_error("lists and dicts nested deeper than " + std::to_string(kMaxValueDepth));
  }
}

}  // namespace

Value::Value(ValueList list) : kind_(ValueKind::kList) {
  check_list_size(list.size());
  int depth = 0;
  for (const Value& v : list) {
    depth = std::max(depth, static_cast<int>(v.depth_));
    holds_namespace_ = holds_namespace_ || v.holds_namespace_;
  }
  check_depth(depth + 1);
  depth_ = static_cast<uint16_t>(depth + 1);
  list_ = std::make_shared<const ValueList>(std::move(list));
}

Value::Value(ValueDict dict) : kind_(ValueKind::kDict) {
  int depth = 0;
  holds_namespace_ = dict.is_namespace;
  for (const auto& [k, v] : dict.entries) {
    depth = std::max(depth, static_cast<int>(v.depth_));
    holds_namespace_ = holds_namespace_ || v.holds_namespace_;
  }
  check_depth(depth + 1);
  depth_ = static_cast<uint16_t>(depth + 1);
  dict_ = std::make_shared<ValueDict>(std::move(dict));
}

Value Value::tuple(ValueList items) {
  Value v(std::move(items));
  v.is_tuple_ = true;
  return v;
}

Value Value::callable(std::string name, std::shared_ptr<const Value> self) {
  Value v;
  v.kind_ = ValueKind::kCallable;
  v.callable_ = std::make_shared<const Callable>(Callable{std::move(name), std::move(self)});
  return v;
}

namespace {

Value value_from_json(const nlohmann::ordered_json& j, int depth);

}  // namespace

Value Value::from_json(const nlohmann::ordered_json& j) { return value_from_json(j, 0); }

namespace {

// Checks depth before descending: the JSON came from a client and may nest without end.
Value value_from_json(const nlohmann::ordered_json& j, int depth) {
  switch (j.type()) {
    case nlohmann::ordered_json::value_t::null: return Value::none();
    case nlohmann::ordered_json::value_t::boolean: return Value(j.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer: return Value(j.get<int64_t>());
    case nlohmann::ordered_json::value_t::number_unsigned: {
      uint64_t u = j.get<uint64_t>();
      if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        throw_render_error("integer " + std::to_string(u) + " does not fit in 64 bits");
      }
      return Value(static_cast<int64_t>(u));
    }
    case nlohmann::ordered_json::value_t::number_float: return Value(j.get<double>());
    case nlohmann::ordered_json::value_t::string: return Value(j.get<std::string>());
    case nlohmann::ordered_json::value_t::array: {
      check_depth(depth + 1);
      ValueList list;
      list.reserve(j.size());
      for (const auto& e : j) list.push_back(value_from_json(e, depth + 1));
      return Value(std::move(list));
    }
    case nlohmann::ordered_json::value_t::object: {
      check_depth(depth + 1);
      ValueDict dict;
      for (const auto& [k, e] : j.items()) dict.entries.emplace_back(k, value_from_json(e, depth + 1));
      return Value(std::move(dict));
    }
    default: return Value::undefined("unsupported JSON value");
  }
}

}  // namespace

const std::string& Value::undefined_hint() const {
  static const std::string kNoHint;
  return string_ ? *string_ : kNoHint;
}

double Value::as_double() const {
  if (kind_ == ValueKind::kFloat) return float_;
  return static_cast<double>(int_);
}

bool Value::truthy() const {
  switch (kind_) {
    case ValueKind::kUndefined:
    case ValueKind::kNone: return false;
    case ValueKind::kBool: return bool_;
    case ValueKind::kInt: return int_ != 0;
    case ValueKind::kFloat: return float_ != 0.0;
    case ValueKind::kString: return !string_->empty();
    case ValueKind::kList: return !list_->empty();
    case ValueKind::kDict: return !dict_->entries.empty();
    case ValueKind::kCallable: return true;
  }
  return false;
}

std::string python_float_repr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  // Shortest round-trip digits in scientific form, then laid out the way float.__repr__
  // does: positional for exponents in [-4, 16), scientific otherwise.
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof(buf), d, std::chars_format::scientific);
  std::string sci(buf, res.ptr);
  bool negative = sci[0] == '-';
  if (negative) sci.erase(0, 1);
  size_t e_pos = sci.find('e');
  int exponent = std::stoi(sci.substr(e_pos + 1));
  std::string digits;
  for (size_t i = 0; i < e_pos; ++i) {
    if (sci[i] != '.') digits += sci[i];
  }
  std::string out;
  if (exponent >= -4 && exponent < 16) {
    int point = exponent + 1;  // digits before the decimal point
    if (point <= 0) {
      out = "0." + std::string(static_cast<size_t>(-point), '0') + digits;
    } else if (static_cast<size_t>(point) >= digits.size()) {
      out = digits + std::string(static_cast<size_t>(point) - digits.size(), '0') + ".0";
    } else {
      out = digits.substr(0, static_cast<size_t>(point)) + "." + digits.substr(static_cast<size_t>(point));
    }
  } else {
    out = digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    char exp_buf[16];
    std::snprintf(exp_buf, sizeof(exp_buf), "e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
    out += exp_buf;
  }
  return negative ? "-" + out : out;
}

namespace {

std::string python_string_repr(const std::string& s) {
  bool has_single = s.find('\'') != std::string::npos;
  bool has_double = s.find('"') != std::string::npos;
  char quote = (has_single && !has_double) ? '"' : '\'';
  std::string out(1, quote);
  for (unsigned char c : s) {
    if (c == quote || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  out += quote;
  return out;
}

}  // namespace

std::string Value::to_str() const {
  switch (kind_) {
    case ValueKind::kUndefined: return "";
    case ValueKind::kString: return *string_;
    default: return repr();
  }
}

std::string Value::repr() const {
  switch (kind_) {
    case ValueKind::kUndefined: return "";
    case ValueKind::kNone: return "None";
    case ValueKind::kBool: return bool_ ? "True" : "False";
    case ValueKind::kInt: return std::to_string(int_);
    case ValueKind::kFloat: return python_float_repr(float_);
    case ValueKind::kString: return python_string_repr(*string_);
    case ValueKind::kList: {
      std::string out = is_tuple_ ? "(" : "[";
      // Checked as it grows: a list of a million references to one long string is cheap to
      // hold and must not be cheap to print.
      for (size_t i = 0; i < list_->size(); ++i) {
        if (i) out += ", ";
        append_checked(out, (*list_)[i].repr());
      }
      if (is_tuple_) return out + (list_->size() == 1 ? ",)" : ")");
      return out + "]";
    }
    case ValueKind::kDict: {
      std::string out = dict_->is_namespace ? "<Namespace {" : "{";
      for (size_t i = 0; i < dict_->entries.size(); ++i) {
        if (i) out += ", ";
        append_checked(out, python_string_repr(dict_->entries[i].first) + ": ");
        append_checked(out, dict_->entries[i].second.repr());
      }
      return out + (dict_->is_namespace ? "}>" : "}");
    }
    case ValueKind::kCallable: return "<function " + callable_->name + ">";
  }
  return "";
}

bool Value::equals(const Value& other) const {
  if (is_number() && other.is_number()) {
    if (kind_ == ValueKind::kFloat || other.kind_ == ValueKind::kFloat) {
      return as_double() == other.as_double();
    }
    return int_ == other.int_;
  }
  if (kind_ != other.kind_) return false;
  switch (kind_) {
    case ValueKind::kUndefined:
    case ValueKind::kNone: return true;
    case ValueKind::kString: return *string_ == *other.string_;
    case ValueKind::kList: {
      if (is_tuple_ != other.is_tuple_ || list_->size() != other.list_->size()) return false;
      for (size_t i = 0; i < list_->size(); ++i) {
        if (!(*list_)[i].equals((*other.list_)[i])) return false;
      }
      return true;
    }
    case ValueKind::kDict: {
      if (dict_ == other.dict_) return true;
      if (dict_->entries.size() != other.dict_->entries.size()) return false;
      for (const auto& [k, v] : dict_->entries) {
        const Value* o = other.dict_->find(k);
        if (o == nullptr || !v.equals(*o)) return false;
      }
      return true;
    }
    case ValueKind::kCallable:
      return callable_ == other.callable_;
    default: return false;
  }
}

std::string Value::type_repr() const {
  switch (kind_) {
    case ValueKind::kUndefined: return "Undefined";
    case ValueKind::kNone: return "None";
    case ValueKind::kBool: return "bool object";
    case ValueKind::kInt: return "int object";
    case ValueKind::kFloat: return "float object";
    case ValueKind::kString: return "str object";
    case ValueKind::kList: return "list object";
    case ValueKind::kDict: return dict_->is_namespace ? "Namespace object" : "dict object";
    case ValueKind::kCallable: return "function object";
  }
  return "object";
}

std::vector<size_t> utf8_offsets(std::string_view s) {
  charge_steps(static_cast<int64_t>(s.size() / 16));  // content[i] in a loop would be quadratic
  std::vector<size_t> offsets;
  offsets.reserve(s.size() + 1);
  for (size_t i = 0; i < s.size(); ++i) {
    if ((static_cast<unsigned char>(s[i]) & 0xC0) != 0x80) offsets.push_back(i);
  }
  offsets.push_back(s.size());  // sentinel: end of the last code point
  return offsets;
}

size_t utf8_length(std::string_view s) {
  charge_steps(static_cast<int64_t>(s.size() / 64));
  size_t n = 0;
  for (char c : s) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80 ? 1 : 0;
  return n;
}

}  // namespace tessera::chat_template
