#include "engine/chat/template_builtins.h"

#include <algorithm>
#include <cmath>
#include <ctime>

#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"
#include "engine/tokenizer/unicode.h"

namespace squeeze::jinja {
namespace {

const Value& NoValue() {
  static const Value* const kNone = new Value(Value::Undefined(""));
  return *kNone;
}

absl::Status Error(absl::string_view what) { return absl::InvalidArgumentError(std::string(what)); }

absl::StatusOr<std::string> StringArg(const Value& v, absl::string_view what) {
  if (!v.is_string()) return Error(absl::StrCat(what, " must be a string, got ", v.TypeName()));
  return v.as_string();
}

// ---- Python str methods (on code points) ------------------------------------------------------

enum class Side { kBoth, kLeft, kRight };

std::string Strip(const std::string& s, const Value& chars, Side side) {
  const std::u32string text = DecodeUtf8(s);
  const bool custom = chars.is_string();
  const std::u32string set = custom ? DecodeUtf8(chars.as_string()) : std::u32string();
  auto strip = [&](char32_t c) {
    return custom ? set.find(c) != std::u32string::npos : IsPythonSpace(c);
  };
  size_t b = 0, e = text.size();
  if (side != Side::kRight) {
    while (b < e && strip(text[b])) ++b;
  }
  if (side != Side::kLeft) {
    while (e > b && strip(text[e - 1])) --e;
  }
  return EncodeUtf8(std::u32string_view(text).substr(b, e - b));
}

// str.split(sep=None, maxsplit=-1).
absl::StatusOr<Value> Split(const std::string& s, const Value& sep, int64_t maxsplit) {
  ValueList parts;
  if (sep.is_none() || sep.is_undefined()) {
    const std::u32string text = DecodeUtf8(s);
    size_t i = 0;
    while (true) {
      while (i < text.size() && IsPythonSpace(text[i])) ++i;
      if (i == text.size()) break;
      if (maxsplit >= 0 && static_cast<int64_t>(parts.size()) == maxsplit) {
        size_t e = text.size();
        while (e > i && IsPythonSpace(text[e - 1])) --e;
        parts.push_back(Value::String(EncodeUtf8(std::u32string_view(text).substr(i, e - i))));
        break;
      }
      size_t j = i;
      while (j < text.size() && !IsPythonSpace(text[j])) ++j;
      parts.push_back(Value::String(EncodeUtf8(std::u32string_view(text).substr(i, j - i))));
      i = j;
    }
    return Value::List(std::move(parts));
  }
  ASSIGN_OR_RETURN(std::string separator, StringArg(sep, "split's separator"));
  if (separator.empty()) return Error("split: empty separator");
  size_t pos = 0;
  while (maxsplit < 0 || static_cast<int64_t>(parts.size()) < maxsplit) {
    const size_t next = s.find(separator, pos);
    if (next == std::string::npos) break;
    parts.push_back(Value::String(s.substr(pos, next - pos)));
    pos = next + separator.size();
  }
  parts.push_back(Value::String(s.substr(pos)));
  return Value::List(std::move(parts));
}

std::string Replace(const std::string& s, const std::string& from, const std::string& to,
                    int64_t count) {
  if (from.empty()) return s;  // Python inserts `to` between characters; never in templates
  std::string out;
  size_t pos = 0;
  for (int64_t n = 0; count < 0 || n < count; ++n) {
    const size_t next = s.find(from, pos);
    if (next == std::string::npos) break;
    out += s.substr(pos, next - pos) + to;
    pos = next + from.size();
  }
  return out + s.substr(pos);
}

// ASCII case mapping (Python maps all of Unicode; templates only case role names).
std::string Upper(std::string s) {
  for (char& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return s;
}
std::string Lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}
std::string Capitalize(const std::string& s) {
  std::string out = Lower(s);
  if (!out.empty()) out[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(out[0])));
  return out;
}
std::string Title(const std::string& s) {
  std::string out = s;
  bool start = true;
  for (char& c : out) {
    const bool alpha = std::isalpha(static_cast<unsigned char>(c));
    c = static_cast<char>(start ? std::toupper(static_cast<unsigned char>(c))
                                : std::tolower(static_cast<unsigned char>(c)));
    start = !alpha;
  }
  return out;
}

absl::StatusOr<bool> AffixMatch(const std::string& s, const Value& affix, bool prefix) {
  auto one = [&](const Value& a) -> absl::StatusOr<bool> {
    ASSIGN_OR_RETURN(std::string x, StringArg(a, prefix ? "startswith" : "endswith"));
    if (x.size() > s.size()) return false;
    return prefix ? s.compare(0, x.size(), x) == 0
                  : s.compare(s.size() - x.size(), x.size(), x) == 0;
  };
  if (affix.is_list()) {  // a tuple of prefixes
    for (const Value& a : affix.as_list()) {
      ASSIGN_OR_RETURN(bool m, one(a));
      if (m) return true;
    }
    return false;
  }
  return one(affix);
}

int64_t Length(const Value& v) {
  if (v.is_string()) return static_cast<int64_t>(DecodeUtf8(v.as_string()).size());
  if (v.is_list()) return static_cast<int64_t>(v.as_list().size());
  if (v.is_map()) return static_cast<int64_t>(v.as_map().size());
  return 0;
}

absl::StatusOr<ValueList> Items(const Value& v, absl::string_view filter) {
  if (v.is_list()) return v.as_list();
  if (v.is_undefined()) return ValueList{};
  if (v.is_string()) {
    ValueList out;
    for (char32_t c : DecodeUtf8(v.as_string())) {
      out.push_back(Value::String(EncodeUtf8(std::u32string(1, c))));
    }
    return out;
  }
  if (v.is_map()) {
    ValueList out;
    for (const auto& [k, x] : v.as_map().entries()) out.push_back(Value::String(k));
    return out;
  }
  return Error(absl::StrCat(filter, ": a ", v.TypeName(), " is not iterable"));
}

Value Attribute(const Value& v, const std::string& name) {
  if (v.is_map()) {
    if (const Value* x = v.as_map().Find(name)) return *x;
  }
  return Value::Undefined(name);
}

// selectattr / rejectattr / select / reject.
absl::StatusOr<Value> Select(const Value& v, const CallArgs& args, bool by_attribute, bool keep) {
  const absl::string_view what =
      by_attribute ? (keep ? "selectattr" : "rejectattr") : (keep ? "select" : "reject");
  ASSIGN_OR_RETURN(ValueList items, Items(v, what));
  size_t next = 0;
  std::string attr;
  if (by_attribute) {
    if (args.args.empty()) return Error(absl::StrCat(what, " needs an attribute name"));
    ASSIGN_OR_RETURN(attr, StringArg(args.args[next++], what));
  }
  std::string test;
  CallArgs test_args;
  if (next < args.args.size()) {
    ASSIGN_OR_RETURN(test, StringArg(args.args[next++], what));
    test_args.args.assign(args.args.begin() + next, args.args.end());
  }
  ValueList out;
  for (const Value& item : items) {
    const Value subject = by_attribute ? Attribute(item, attr) : item;
    bool pass = subject.Truthy();
    if (!test.empty()) {
      ASSIGN_OR_RETURN(pass, ApplyTest(test, subject, test_args));
    }
    if (pass == keep) out.push_back(item);
  }
  return Value::List(std::move(out));
}

std::string Indent(const std::string& s, const std::string& pad, bool first, bool blank) {
  std::string out;
  size_t pos = 0;
  bool is_first = true;
  while (true) {
    const size_t nl = s.find('\n', pos);
    const std::string line = s.substr(pos, nl == std::string::npos ? std::string::npos : nl - pos);
    if ((!is_first || first) && (blank || !Strip(line, NoValue(), Side::kBoth).empty())) {
      out += pad;
    }
    out += line;
    is_first = false;
    if (nl == std::string::npos) break;
    out += '\n';
    pos = nl + 1;
  }
  return out;
}

}  // namespace

bool IsPythonSpace(char32_t c) { return unicode::IsWhiteSpace(c) || (c >= 0x1C && c <= 0x1F); }

const Value& CallArgs::Get(size_t i, absl::string_view name, const Value& fallback) const {
  for (const auto& [k, v] : kwargs) {
    if (k == name) return v;
  }
  return i < args.size() ? args[i] : fallback;
}

absl::StatusOr<Value> ApplyFilter(absl::string_view name, const Value& v, const CallArgs& args) {
  static const Value kNoneValue = Value::None();
  if (name == "trim") {
    return Value::String(Strip(v.Str(), args.Get(0, "chars", kNoneValue), Side::kBoth));
  }
  if (name == "length" || name == "count") return Value::Int(Length(v));
  if (name == "tojson") {
    // transformers' override: json.dumps(x, ensure_ascii=False, indent=indent,
    // sort_keys=sort_keys).
    const Value& indent = args.Get(0, "indent", kNoneValue);
    const Value& sort = args.Get(3, "sort_keys", kNoneValue);
    if (args.Get(2, "separators", kNoneValue).Truthy()) {
      return Error("tojson: custom separators are not supported");
    }
    ASSIGN_OR_RETURN(
        std::string json,
        v.ToJson(indent.is_int() ? static_cast<int>(indent.as_int()) : -1, sort.Truthy()));
    return Value::String(std::move(json));
  }
  if (name == "string") return Value::String(v.Str());
  if (name == "list") {
    ASSIGN_OR_RETURN(ValueList items, Items(v, name));
    return Value::List(std::move(items));
  }
  if (name == "first" || name == "last") {
    ASSIGN_OR_RETURN(ValueList items, Items(v, name));
    if (items.empty()) return Value::Undefined(std::string(name));
    return name == "first" ? items.front() : items.back();
  }
  if (name == "join") {
    ASSIGN_OR_RETURN(ValueList items, Items(v, name));
    static const Value kEmpty = Value::String("");
    const std::string sep = args.Get(0, "d", kEmpty).Str();
    const Value& attribute = args.Get(1, "attribute", kNoneValue);
    std::string out;
    for (size_t i = 0; i < items.size(); ++i) {
      if (i > 0) out += sep;
      out +=
          attribute.is_string() ? Attribute(items[i], attribute.as_string()).Str() : items[i].Str();
    }
    return Value::String(std::move(out));
  }
  if (name == "default" || name == "d") {
    static const Value kEmpty = Value::String("");
    const bool boolean = args.Get(1, "boolean", kNoneValue).Truthy();
    if (v.is_undefined() || (boolean && !v.Truthy())) return args.Get(0, "default_value", kEmpty);
    return v;
  }
  if (name == "upper") return Value::String(Upper(v.Str()));
  if (name == "lower") return Value::String(Lower(v.Str()));
  if (name == "capitalize") return Value::String(Capitalize(v.Str()));
  if (name == "title") return Value::String(Title(v.Str()));
  if (name == "replace") {
    if (args.args.size() < 2) return Error("replace needs old and new");
    const Value& count = args.Get(2, "count", kNoneValue);
    return Value::String(Replace(v.Str(), args.args[0].Str(), args.args[1].Str(),
                                 count.is_int() ? count.as_int() : -1));
  }
  if (name == "selectattr" || name == "rejectattr") {
    return Select(v, args, /*by_attribute=*/true, name == "selectattr");
  }
  if (name == "select" || name == "reject") return Select(v, args, false, name == "select");
  if (name == "map") {
    ASSIGN_OR_RETURN(ValueList items, Items(v, name));
    const Value& attribute = args.Get(99, "attribute", kNoneValue);
    ValueList out;
    if (attribute.is_string()) {
      const Value& dflt = args.Get(99, "default", NoValue());
      for (const Value& item : items) {
        Value x = Attribute(item, attribute.as_string());
        out.push_back(x.is_undefined() && !dflt.is_undefined() ? dflt : x);
      }
      return Value::List(std::move(out));
    }
    if (args.args.empty() || !args.args[0].is_string()) {
      return Error("map needs attribute= or a filter name");
    }
    CallArgs rest;
    rest.args.assign(args.args.begin() + 1, args.args.end());
    for (const Value& item : items) {
      ASSIGN_OR_RETURN(Value x, ApplyFilter(args.args[0].as_string(), item, rest));
      out.push_back(std::move(x));
    }
    return Value::List(std::move(out));
  }
  if (name == "items") {
    if (v.is_undefined()) return Value::List({});
    if (!v.is_map()) return Error(absl::StrCat("items: a ", v.TypeName(), " is not a mapping"));
    ValueList out;
    for (const auto& [k, x] : v.as_map().entries()) {
      out.push_back(Value::List({Value::String(k), x}));
    }
    return Value::List(std::move(out));
  }
  if (name == "reverse") {
    if (v.is_string()) {
      std::u32string s = DecodeUtf8(v.as_string());
      std::reverse(s.begin(), s.end());
      return Value::String(EncodeUtf8(s));
    }
    ASSIGN_OR_RETURN(ValueList items, Items(v, name));
    std::reverse(items.begin(), items.end());
    return Value::List(std::move(items));
  }
  if (name == "safe") return v;
  if (name == "int") {
    if (v.is_int()) return v;
    if (v.is_float()) return Value::Int(static_cast<int64_t>(v.as_number()));
    if (v.is_bool()) return Value::Int(v.as_bool());
    if (v.is_string()) {
      char* end = nullptr;
      const long long x = std::strtoll(v.as_string().c_str(), &end, 10);
      if (end != v.as_string().c_str() && *end == '\0') return Value::Int(x);
    }
    return args.Get(0, "default", Value::Int(0));
  }
  if (name == "float") {
    if (v.is_number()) return Value::Float(v.as_number());
    if (v.is_string()) {
      char* end = nullptr;
      const double x = std::strtod(v.as_string().c_str(), &end);
      if (end != v.as_string().c_str() && *end == '\0') return Value::Float(x);
    }
    return args.Get(0, "default", Value::Float(0.0));
  }
  if (name == "abs") {
    if (v.is_int()) return Value::Int(v.as_int() < 0 ? -v.as_int() : v.as_int());
    if (v.is_float()) return Value::Float(std::fabs(v.as_number()));
    return Error(absl::StrCat("abs: bad operand ", v.TypeName()));
  }
  if (name == "indent") {
    static const Value kFour = Value::Int(4);
    const Value& width = args.Get(0, "width", kFour);
    const std::string pad = width.is_string()
                                ? width.as_string()
                                : std::string(width.is_int() ? width.as_int() : 4, ' ');
    return Value::String(Indent(v.Str(), pad, args.Get(1, "first", kNoneValue).Truthy(),
                                args.Get(2, "blank", kNoneValue).Truthy()));
  }
  return Error(absl::StrCat("unsupported filter '", name, "'"));
}

absl::StatusOr<bool> ApplyTest(absl::string_view name, const Value& v, const CallArgs& args) {
  const Value& arg = args.Get(0, "", NoValue());
  if (name == "defined") return !v.is_undefined();
  if (name == "undefined") return v.is_undefined();
  if (name == "none") return v.is_none();
  if (name == "string") return v.is_string();
  if (name == "number") return v.is_number();
  if (name == "integer") return v.is_int();
  if (name == "float") return v.is_float();
  if (name == "boolean") return v.is_bool();
  if (name == "true") return v.is_bool() && v.as_bool();
  if (name == "false") return v.is_bool() && !v.as_bool();
  if (name == "mapping") return v.is_map();
  if (name == "sequence") return v.is_list() || v.is_string() || v.is_map();
  if (name == "iterable") return v.is_list() || v.is_string() || v.is_map() || v.is_undefined();
  if (name == "callable") return v.is_function();
  if (name == "equalto" || name == "eq" || name == "==" || name == "sameas") return v.Equals(arg);
  if (name == "ne" || name == "!=") return !v.Equals(arg);
  if (name == "lt" || name == "gt" || name == "le" || name == "ge" || name == "lessthan" ||
      name == "greaterthan") {
    if (!v.is_number() || !arg.is_number()) {
      return Error(absl::StrCat("test '", name, "' needs numbers"));
    }
    const double a = v.as_number(), b = arg.as_number();
    if (name == "lt" || name == "lessthan") return a < b;
    if (name == "gt" || name == "greaterthan") return a > b;
    return name == "le" ? a <= b : a >= b;
  }
  if (name == "in") {
    if (arg.is_string() && v.is_string())
      return arg.as_string().find(v.as_string()) != std::string::npos;
    if (arg.is_list()) {
      for (const Value& x : arg.as_list()) {
        if (x.Equals(v)) return true;
      }
      return false;
    }
    if (arg.is_map()) return v.is_string() && arg.as_map().Find(v.as_string()) != nullptr;
    return Error("test 'in' needs a container");
  }
  if (name == "odd" || name == "even" || name == "divisibleby") {
    if (!v.is_int()) return Error(absl::StrCat("test '", name, "' needs an integer"));
    if (name == "divisibleby") {
      if (!arg.is_int() || arg.as_int() == 0) return Error("divisibleby needs a non-zero integer");
      return v.as_int() % arg.as_int() == 0;
    }
    return (v.as_int() % 2 != 0) == (name == "odd");
  }
  if (name == "lower") return v.is_string() && Lower(v.as_string()) == v.as_string();
  if (name == "upper") return v.is_string() && Upper(v.as_string()) == v.as_string();
  return Error(absl::StrCat("unsupported test '", name, "'"));
}

absl::StatusOr<Value> CallMethod(const Value& v, absl::string_view name, const CallArgs& args) {
  static const Value kNoneValue = Value::None();
  static const Value kMinusOne = Value::Int(-1);
  if (v.is_string()) {
    const std::string& s = v.as_string();
    if (name == "strip")
      return Value::String(Strip(s, args.Get(0, "chars", kNoneValue), Side::kBoth));
    if (name == "lstrip")
      return Value::String(Strip(s, args.Get(0, "chars", kNoneValue), Side::kLeft));
    if (name == "rstrip") {
      return Value::String(Strip(s, args.Get(0, "chars", kNoneValue), Side::kRight));
    }
    if (name == "split") {
      const Value& maxsplit = args.Get(1, "maxsplit", kMinusOne);
      return Split(s, args.Get(0, "sep", kNoneValue), maxsplit.is_int() ? maxsplit.as_int() : -1);
    }
    if (name == "startswith" || name == "endswith") {
      if (args.args.empty()) return Error(absl::StrCat(name, " needs an argument"));
      ASSIGN_OR_RETURN(bool m, AffixMatch(s, args.args[0], name == "startswith"));
      return Value::Bool(m);
    }
    if (name == "upper") return Value::String(Upper(s));
    if (name == "lower") return Value::String(Lower(s));
    if (name == "title") return Value::String(Title(s));
    if (name == "capitalize") return Value::String(Capitalize(s));
    if (name == "replace") {
      if (args.args.size() < 2) return Error("replace needs old and new");
      ASSIGN_OR_RETURN(std::string from, StringArg(args.args[0], "replace"));
      ASSIGN_OR_RETURN(std::string to, StringArg(args.args[1], "replace"));
      const Value& count = args.Get(2, "count", kMinusOne);
      return Value::String(Replace(s, from, to, count.is_int() ? count.as_int() : -1));
    }
    if (name == "find" || name == "count") {
      if (args.args.empty()) return Error(absl::StrCat(name, " needs an argument"));
      ASSIGN_OR_RETURN(std::string sub, StringArg(args.args[0], name));
      if (name == "find") {
        const size_t pos = s.find(sub);
        if (pos == std::string::npos) return Value::Int(-1);
        return Value::Int(static_cast<int64_t>(DecodeUtf8(s.substr(0, pos)).size()));
      }
      if (sub.empty()) return Value::Int(Length(v) + 1);
      int64_t n = 0;
      for (size_t pos = s.find(sub); pos != std::string::npos;
           pos = s.find(sub, pos + sub.size())) {
        ++n;
      }
      return Value::Int(n);
    }
    if (name == "join") {
      if (args.args.empty()) return Error("join needs an iterable");
      ASSIGN_OR_RETURN(ValueList items, Items(args.args[0], "join"));
      std::string out;
      for (size_t i = 0; i < items.size(); ++i) {
        if (!items[i].is_string()) return Error("join: sequence items must be strings");
        if (i > 0) out += s;
        out += items[i].as_string();
      }
      return Value::String(std::move(out));
    }
    if (name == "isspace" || name == "isdigit" || name == "isalpha") {
      const std::u32string text = DecodeUtf8(s);
      bool all = !text.empty();
      for (char32_t c : text) {
        const bool ok = name == "isspace"   ? IsPythonSpace(c)
                        : name == "isdigit" ? (c >= '0' && c <= '9')
                                            : unicode::IsLetter(c);
        all = all && ok;
      }
      return Value::Bool(all);
    }
  }
  if (v.is_map() && !v.is_namespace()) {
    const ValueMap& m = v.as_map();
    if (name == "items") return ApplyFilter("items", v, {});
    if (name == "keys") {
      ValueList out;
      for (const auto& [k, x] : m.entries()) out.push_back(Value::String(k));
      return Value::List(std::move(out));
    }
    if (name == "values") {
      ValueList out;
      for (const auto& [k, x] : m.entries()) out.push_back(x);
      return Value::List(std::move(out));
    }
    if (name == "get") {
      if (args.args.empty() || !args.args[0].is_string()) return Error("get needs a string key");
      const Value* x = m.Find(args.args[0].as_string());
      return x != nullptr ? *x : args.Get(1, "default", kNoneValue);
    }
  }
  return Error(absl::StrCat("a ", v.TypeName(), " has no method '", name, "'"));
}

bool IsGlobalFunction(absl::string_view name) {
  return name == "namespace" || name == "range" || name == "dict" || name == "strftime_now";
}

absl::StatusOr<Value> CallGlobal(absl::string_view name, const CallArgs& args, absl::Time now) {
  if (name == "namespace" || name == "dict") {
    ValueMap map;
    for (const Value& a : args.args) {  // namespace({...}) / dict({...}) copy a mapping
      if (!a.is_map()) return Error(absl::StrCat(name, "() takes keyword arguments or a dict"));
      for (const auto& [k, x] : a.as_map().entries()) map.Set(k, x);
    }
    for (const auto& [k, x] : args.kwargs) map.Set(k, x);
    return name == "namespace" ? Value::Namespace(std::move(map)) : Value::Map(std::move(map));
  }
  if (name == "range") {
    int64_t p[3] = {0, 0, 1};
    if (args.args.empty() || args.args.size() > 3) return Error("range() takes 1 to 3 integers");
    for (const Value& a : args.args) {
      if (!a.is_int()) return Error("range() takes integers");
    }
    if (args.args.size() == 1) {
      p[1] = args.args[0].as_int();
    } else {
      for (size_t i = 0; i < args.args.size(); ++i) p[i] = args.args[i].as_int();
    }
    if (p[2] == 0) return Error("range() step must not be zero");
    ValueList out;
    for (int64_t i = p[0]; p[2] > 0 ? i < p[1] : i > p[1]; i += p[2]) {
      if (out.size() >= 1'000'000) return Error("range() longer than 1000000");
      out.push_back(Value::Int(i));
    }
    return Value::List(std::move(out));
  }
  if (name == "strftime_now") {
    if (args.args.empty() || !args.args[0].is_string()) return Error("strftime_now needs a format");
    const std::time_t t = absl::ToTimeT(now);
    std::tm tm{};
    gmtime_r(&t, &tm);
    char buf[256];
    const size_t n = std::strftime(buf, sizeof(buf), args.args[0].as_string().c_str(), &tm);
    return Value::String(std::string(buf, n));
  }
  return Error(absl::StrCat("unknown function '", name, "'"));
}

}  // namespace squeeze::jinja
