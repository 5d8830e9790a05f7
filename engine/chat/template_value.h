// Values of the chat-template language (engine/chat/template_engine.h): the Python objects a
// Jinja2 template sees when transformers renders a chat template (None, bool, int, float, str,
// list, dict), plus Jinja's Undefined, namespace() objects and builtin functions. Printing and
// tojson follow Python (repr of floats and containers, json.dumps(ensure_ascii=False)).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json_fwd.hpp"

namespace squeeze::jinja {

class Value;
using ValueList = std::vector<Value>;

// A dict with string keys in insertion order (Python dicts keep it; items() and tojson show it).
class ValueMap {
 public:
  const Value* Find(absl::string_view key) const;
  void Set(std::string key, Value value);
  const std::vector<std::pair<std::string, Value>>& entries() const { return entries_; }
  size_t size() const;  // defined below Value (clang needs Value complete here)

 private:
  std::vector<std::pair<std::string, Value>> entries_;
};

class Value {
 public:
  enum class Kind {
    kUndefined,
    kNone,
    kBool,
    kInt,
    kFloat,
    kString,
    kList,
    kMap,
    kNamespace,
    kFunction
  };

  Value() = default;  // Undefined
  static Value Undefined(std::string name);
  static Value None();
  static Value Bool(bool b);
  static Value Int(int64_t i);
  static Value Float(double f);
  static Value String(std::string s);
  static Value List(ValueList items);
  static Value Map(ValueMap map);
  // A namespace(): attributes assignable with {% set ns.x = ... %}, shared by every copy.
  static Value Namespace(ValueMap map);
  // A builtin function, called by name (raise_exception, namespace, range, strftime_now).
  static Value Function(std::string name);
  // From JSON (objects keep their key order when the json type does).
  static Value FromJson(const nlohmann::json& j);

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::kUndefined; }
  bool is_none() const { return kind_ == Kind::kNone; }
  bool is_bool() const { return kind_ == Kind::kBool; }
  bool is_int() const { return kind_ == Kind::kInt; }
  bool is_float() const { return kind_ == Kind::kFloat; }
  bool is_number() const { return kind_ == Kind::kInt || kind_ == Kind::kFloat; }
  bool is_string() const { return kind_ == Kind::kString; }
  bool is_list() const { return kind_ == Kind::kList; }
  bool is_map() const { return kind_ == Kind::kMap || kind_ == Kind::kNamespace; }
  bool is_namespace() const { return kind_ == Kind::kNamespace; }
  bool is_function() const { return kind_ == Kind::kFunction; }

  bool as_bool() const { return b_; }
  int64_t as_int() const { return i_; }
  double as_number() const { return kind_ == Kind::kFloat ? f_ : static_cast<double>(i_); }
  const std::string& as_string() const { return s_; }  // also the Undefined / Function name
  const ValueList& as_list() const { return *list_; }
  const ValueMap& as_map() const { return *map_; }
  ValueMap& namespace_map() const { return *map_; }  // kNamespace only

  // Python truthiness (Undefined is false).
  bool Truthy() const;
  // str(value) as Jinja prints it: Undefined -> "", None -> "None", floats as Python repr,
  // containers as Python repr.
  std::string Str() const;
  // Python repr (strings quoted).
  std::string Repr() const;
  // json.dumps(value, ensure_ascii=False, indent=indent (< 0: none), sort_keys=sort_keys).
  absl::StatusOr<std::string> ToJson(int indent, bool sort_keys) const;
  // Python ==.
  bool Equals(const Value& other) const;
  // A name for error messages ("string", "list", ...).
  std::string TypeName() const;

 private:
  Kind kind_ = Kind::kUndefined;
  bool b_ = false;
  int64_t i_ = 0;
  double f_ = 0.0;
  std::string s_;
  std::shared_ptr<const ValueList> list_;
  std::shared_ptr<ValueMap> map_;
};

// Python repr of a float ("1.0", "0.1", "1e-05", "1e+16").
std::string PythonFloatRepr(double f);

// UTF-8 <-> code points (Python strings index code points).
std::u32string DecodeUtf8(absl::string_view s);
std::string EncodeUtf8(std::u32string_view s);

inline size_t ValueMap::size() const { return entries_.size(); }

}  // namespace squeeze::jinja
