#include "engine/chat/template_engine.h"

#include <cmath>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/chat/template_builtins.h"
#include "engine/chat/template_parser.h"
#include "engine/common/status_macros.h"

namespace squeeze::jinja {
namespace {

// Guards against runaway templates (a loop over range(10**9), output without bound).
constexpr int64_t kMaxLoopIterations = 1'000'000;
constexpr size_t kMaxOutputBytes = 256u << 20;

enum class Flow { kNormal, kBreak, kContinue };

absl::Status RuntimeError(int line, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("chat template line ", line, ": ", what));
}

// Python's slice.indices(): the positions a[start:stop:step] visits.
absl::StatusOr<std::vector<int64_t>> SliceIndices(int64_t n, const Value& start, const Value& stop,
                                                  const Value& step, int line) {
  auto as_int = [&](const Value& v, std::optional<int64_t>* out) -> absl::Status {
    if (v.is_none() || v.is_undefined()) return absl::OkStatus();
    if (!v.is_int()) return RuntimeError(line, "slice indices must be integers");
    *out = v.as_int();
    return absl::OkStatus();
  };
  std::optional<int64_t> b, e, s;
  RETURN_IF_ERROR(as_int(start, &b));
  RETURN_IF_ERROR(as_int(stop, &e));
  RETURN_IF_ERROR(as_int(step, &s));
  const int64_t st = s.value_or(1);
  if (st == 0) return RuntimeError(line, "slice step cannot be zero");
  auto clamp = [&](std::optional<int64_t> v, int64_t dflt) {
    if (!v) return dflt;
    int64_t x = *v < 0 ? *v + n : *v;
    if (st > 0) return std::clamp<int64_t>(x, 0, n);
    return std::clamp<int64_t>(x, -1, n - 1);
  };
  const int64_t lo = clamp(b, st > 0 ? 0 : n - 1), hi = clamp(e, st > 0 ? n : -1);
  std::vector<int64_t> out;
  for (int64_t i = lo; st > 0 ? i < hi : i > hi; i += st) out.push_back(i);
  return out;
}

class Renderer {
 public:
  Renderer(const ValueMap& variables, absl::Time now) : now_(now) { frames_.push_back(variables); }

  absl::StatusOr<Flow> RenderBody(const Body& body, std::string* out) {
    for (const NodePtr& node : body) {
      ASSIGN_OR_RETURN(Flow flow, RenderNode(*node, out));
      if (flow != Flow::kNormal) return flow;
      if (out->size() > kMaxOutputBytes) {
        return RuntimeError(node->line, "the rendered prompt exceeds 256 MiB");
      }
    }
    return Flow::kNormal;
  }

 private:
  absl::StatusOr<Flow> RenderNode(const Node& n, std::string* out) {
    switch (n.type) {
      case Node::Type::kText:
        *out += n.text;
        return Flow::kNormal;
      case Node::Type::kOutput: {
        ASSIGN_OR_RETURN(Value v, Eval(*n.expr));
        *out += v.Str();
        return Flow::kNormal;
      }
      case Node::Type::kIf:
        for (const auto& [cond, body] : n.branches) {
          ASSIGN_OR_RETURN(Value c, Eval(*cond));
          if (c.Truthy()) return RenderBody(body, out);
        }
        return RenderBody(n.else_body, out);
      case Node::Type::kFor:
        return RenderFor(n, out);
      case Node::Type::kSet: {
        ASSIGN_OR_RETURN(Value v, Eval(*n.expr));
        if (n.attr.empty()) {
          frames_.back().Set(n.targets[0], std::move(v));
          return Flow::kNormal;
        }
        const Value target = Lookup(n.targets[0]);
        if (!target.is_namespace()) {
          return RuntimeError(n.line, absl::StrCat("cannot assign attribute on '", n.targets[0],
                                                   "': only namespace() objects are mutable"));
        }
        target.namespace_map().Set(n.attr, std::move(v));
        return Flow::kNormal;
      }
      case Node::Type::kBreak:
        return Flow::kBreak;
      case Node::Type::kContinue:
        return Flow::kContinue;
      case Node::Type::kBlock:
        return RenderBody(n.body, out);
    }
    return Flow::kNormal;
  }

  absl::StatusOr<Flow> RenderFor(const Node& n, std::string* out) {
    ASSIGN_OR_RETURN(Value iterable, Eval(*n.expr));
    ValueList items;
    if (iterable.is_list()) {
      items = iterable.as_list();
    } else if (iterable.is_map()) {
      for (const auto& [k, v] : iterable.as_map().entries()) items.push_back(Value::String(k));
    } else if (iterable.is_string()) {
      for (char32_t c : DecodeUtf8(iterable.as_string())) {
        items.push_back(Value::String(EncodeUtf8(std::u32string(1, c))));
      }
    } else if (!iterable.is_undefined() && !iterable.is_none()) {
      return RuntimeError(n.line, absl::StrCat("cannot iterate over a ", iterable.TypeName()));
    } else if (iterable.is_none()) {
      return RuntimeError(n.line, "cannot iterate over none");
    }
    // The loop filter runs before `loop` is known (jinja2 evaluates it per item).
    if (n.cond != nullptr) {
      ValueList kept;
      for (const Value& item : items) {
        frames_.emplace_back();
        RETURN_IF_ERROR(BindTargets(n, item));
        absl::StatusOr<Value> c = Eval(*n.cond);
        frames_.pop_back();
        if (!c.ok()) return c.status();
        if (c->Truthy()) kept.push_back(item);
      }
      items = std::move(kept);
    }
    if (items.empty()) return RenderBody(n.else_body, out);
    const int64_t len = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < len; ++i) {
      if (++iterations_ > kMaxLoopIterations) {
        return RuntimeError(n.line, "more than 1000000 loop iterations");
      }
      frames_.emplace_back();  // a fresh scope per iteration, as jinja2
      ValueMap loop;
      loop.Set("index0", Value::Int(i));
      loop.Set("index", Value::Int(i + 1));
      loop.Set("revindex", Value::Int(len - i));
      loop.Set("revindex0", Value::Int(len - i - 1));
      loop.Set("first", Value::Bool(i == 0));
      loop.Set("last", Value::Bool(i == len - 1));
      loop.Set("length", Value::Int(len));
      loop.Set("previtem", i > 0 ? items[i - 1] : Value::Undefined("previtem"));
      loop.Set("nextitem", i + 1 < len ? items[i + 1] : Value::Undefined("nextitem"));
      frames_.back().Set("loop", Value::Map(std::move(loop)));
      absl::Status bound = BindTargets(n, items[i]);
      absl::StatusOr<Flow> flow = bound.ok() ? RenderBody(n.body, out) : bound;
      frames_.pop_back();
      if (!flow.ok()) return flow.status();
      if (*flow == Flow::kBreak) break;
    }
    return Flow::kNormal;
  }

  absl::Status BindTargets(const Node& n, const Value& item) {
    if (n.targets.size() == 1) {
      frames_.back().Set(n.targets[0], item);
      return absl::OkStatus();
    }
    if (!item.is_list() || item.as_list().size() != n.targets.size()) {
      return RuntimeError(n.line, absl::StrCat("cannot unpack a ", item.TypeName(), " into ",
                                               n.targets.size(), " loop variables"));
    }
    for (size_t k = 0; k < n.targets.size(); ++k) {
      frames_.back().Set(n.targets[k], item.as_list()[k]);
    }
    return absl::OkStatus();
  }

  Value Lookup(const std::string& name) const {
    for (auto it = frames_.rbegin(); it != frames_.rend(); ++it) {
      if (const Value* v = it->Find(name)) return *v;
    }
    if (name == "raise_exception" || IsGlobalFunction(name)) return Value::Function(name);
    return Value::Undefined(name);
  }

  static absl::Status UndefinedError(const Value& v, int line) {
    return RuntimeError(line, absl::StrCat("'", v.as_string(), "' is undefined"));
  }

  absl::StatusOr<CallArgs> EvalArgs(const Expr& e, size_t first) {
    CallArgs args;
    for (size_t i = first; i < e.args.size(); ++i) {
      ASSIGN_OR_RETURN(Value v, Eval(*e.args[i]));
      args.args.push_back(std::move(v));
    }
    for (const auto& [k, x] : e.kwargs) {
      ASSIGN_OR_RETURN(Value v, Eval(*x));
      args.kwargs.emplace_back(k, std::move(v));
    }
    return args;
  }

  absl::StatusOr<Value> Eval(const Expr& e) {
    absl::StatusOr<Value> v = EvalInner(e);
    if (!v.ok() && !absl::StartsWith(v.status().message(), "chat template")) {
      return RuntimeError(e.line, v.status().message());
    }
    return v;
  }

  absl::StatusOr<Value> EvalInner(const Expr& e) {
    switch (e.type) {
      case Expr::Type::kLiteral:
        return e.value;
      case Expr::Type::kName:
        return Lookup(e.name);
      case Expr::Type::kList: {
        ValueList items;
        for (const ExprPtr& x : e.args) {
          ASSIGN_OR_RETURN(Value v, Eval(*x));
          items.push_back(std::move(v));
        }
        return Value::List(std::move(items));
      }
      case Expr::Type::kDict: {
        ValueMap map;
        for (size_t i = 0; i + 1 < e.args.size(); i += 2) {
          ASSIGN_OR_RETURN(Value k, Eval(*e.args[i]));
          ASSIGN_OR_RETURN(Value v, Eval(*e.args[i + 1]));
          if (!k.is_string()) return RuntimeError(e.line, "dict keys must be strings");
          map.Set(k.as_string(), std::move(v));
        }
        return Value::Map(std::move(map));
      }
      case Expr::Type::kAttribute: {
        ASSIGN_OR_RETURN(Value obj, Eval(*e.args[0]));
        if (obj.is_undefined()) return UndefinedError(obj, e.line);
        if (obj.is_map()) {
          const Value* v = obj.as_map().Find(e.name);
          return v != nullptr ? *v : Value::Undefined(e.name);
        }
        return Value::Undefined(e.name);
      }
      case Expr::Type::kSubscript: {
        ASSIGN_OR_RETURN(Value obj, Eval(*e.args[0]));
        ASSIGN_OR_RETURN(Value key, Eval(*e.args[1]));
        return Subscript(obj, key, e.line);
      }
      case Expr::Type::kSlice: {
        ASSIGN_OR_RETURN(Value obj, Eval(*e.args[0]));
        Value parts[3];
        for (int k = 0; k < 3; ++k) {
          if (e.args[k + 1] != nullptr) {
            ASSIGN_OR_RETURN(parts[k], Eval(*e.args[k + 1]));
          }
        }
        if (obj.is_undefined()) return UndefinedError(obj, e.line);
        if (obj.is_list()) {
          const ValueList& list = obj.as_list();
          ASSIGN_OR_RETURN(auto idx, SliceIndices(static_cast<int64_t>(list.size()), parts[0],
                                                  parts[1], parts[2], e.line));
          ValueList out;
          for (int64_t i : idx) out.push_back(list[i]);
          return Value::List(std::move(out));
        }
        if (obj.is_string()) {
          const std::u32string s = DecodeUtf8(obj.as_string());
          ASSIGN_OR_RETURN(auto idx, SliceIndices(static_cast<int64_t>(s.size()), parts[0],
                                                  parts[1], parts[2], e.line));
          std::u32string out;
          for (int64_t i : idx) out.push_back(s[i]);
          return Value::String(EncodeUtf8(out));
        }
        return RuntimeError(e.line, absl::StrCat("cannot slice a ", obj.TypeName()));
      }
      case Expr::Type::kCall:
        return EvalCall(e);
      case Expr::Type::kFilter: {
        ASSIGN_OR_RETURN(Value subject, Eval(*e.args[0]));
        ASSIGN_OR_RETURN(CallArgs args, EvalArgs(e, 1));
        return ApplyFilter(e.name, subject, args);
      }
      case Expr::Type::kTest: {
        ASSIGN_OR_RETURN(Value subject, Eval(*e.args[0]));
        ASSIGN_OR_RETURN(CallArgs args, EvalArgs(e, 1));
        ASSIGN_OR_RETURN(bool result, ApplyTest(e.name, subject, args));
        return Value::Bool(result != e.negated);
      }
      case Expr::Type::kUnary: {
        ASSIGN_OR_RETURN(Value v, Eval(*e.args[0]));
        if (e.name == "not") return Value::Bool(!v.Truthy());
        if (v.is_undefined()) return UndefinedError(v, e.line);
        if (!v.is_number()) {
          return RuntimeError(e.line,
                              absl::StrCat("bad operand for unary ", e.name, ": ", v.TypeName()));
        }
        if (e.name == "+") return v;
        return v.is_int() ? Value::Int(-v.as_int()) : Value::Float(-v.as_number());
      }
      case Expr::Type::kBinary:
        return EvalBinary(e);
      case Expr::Type::kConditional: {
        ASSIGN_OR_RETURN(Value c, Eval(*e.args[1]));
        if (c.Truthy()) return Eval(*e.args[0]);
        if (e.args[2] == nullptr) return Value::Undefined("");
        return Eval(*e.args[2]);
      }
    }
    return RuntimeError(e.line, "unknown expression");
  }

  absl::StatusOr<Value> Subscript(const Value& obj, const Value& key, int line) {
    if (obj.is_undefined()) return UndefinedError(obj, line);
    if (obj.is_map()) {
      if (!key.is_string()) return Value::Undefined(key.Str());
      const Value* v = obj.as_map().Find(key.as_string());
      return v != nullptr ? *v : Value::Undefined(key.as_string());
    }
    if (obj.is_list() || obj.is_string()) {
      if (!key.is_int()) return Value::Undefined(key.Str());
      if (obj.is_list()) {
        const int64_t n = static_cast<int64_t>(obj.as_list().size());
        const int64_t i = key.as_int() < 0 ? key.as_int() + n : key.as_int();
        if (i < 0 || i >= n) return Value::Undefined(absl::StrCat("[", key.as_int(), "]"));
        return obj.as_list()[i];
      }
      const std::u32string s = DecodeUtf8(obj.as_string());
      const int64_t n = static_cast<int64_t>(s.size());
      const int64_t i = key.as_int() < 0 ? key.as_int() + n : key.as_int();
      if (i < 0 || i >= n) return Value::Undefined(absl::StrCat("[", key.as_int(), "]"));
      return Value::String(EncodeUtf8(std::u32string(1, s[i])));
    }
    return Value::Undefined(key.Str());
  }

  absl::StatusOr<Value> EvalCall(const Expr& e) {
    const Expr& callee = *e.args[0];
    ASSIGN_OR_RETURN(CallArgs args, EvalArgs(e, 1));
    if (callee.type == Expr::Type::kAttribute) {
      ASSIGN_OR_RETURN(Value obj, Eval(*callee.args[0]));
      if (obj.is_undefined()) return UndefinedError(obj, e.line);
      // As Python's getattr: a str or dict method, never a dict entry.
      return CallMethod(obj, callee.name, args);
    }
    ASSIGN_OR_RETURN(Value fn, Eval(callee));
    if (!fn.is_function()) {
      if (fn.is_undefined()) return UndefinedError(fn, e.line);
      return RuntimeError(e.line, absl::StrCat("a ", fn.TypeName(), " is not callable"));
    }
    if (fn.as_string() == "raise_exception") {
      const std::string message = args.args.empty() ? "" : args.args[0].Str();
      return RuntimeError(e.line, absl::StrCat("raise_exception: ", message));
    }
    return CallGlobal(fn.as_string(), args, now_);
  }

  absl::StatusOr<Value> EvalBinary(const Expr& e) {
    const std::string& op = e.name;
    ASSIGN_OR_RETURN(Value a, Eval(*e.args[0]));
    if (op == "and") return a.Truthy() ? Eval(*e.args[1]) : a;
    if (op == "or") return a.Truthy() ? a : Eval(*e.args[1]);
    ASSIGN_OR_RETURN(Value b, Eval(*e.args[1]));
    if (op == "~") return Value::String(a.Str() + b.Str());
    if (op == "==") return Value::Bool(a.Equals(b));
    if (op == "!=") return Value::Bool(!a.Equals(b));
    if (op == "in" || op == "notin") {
      ASSIGN_OR_RETURN(bool in, Contains(b, a, e.line));
      return Value::Bool(in == (op == "in"));
    }
    if (a.is_undefined()) return UndefinedError(a, e.line);
    if (b.is_undefined()) return UndefinedError(b, e.line);
    auto type_error = [&]() {
      return RuntimeError(e.line, absl::StrCat("unsupported operand types for ", op, ": ",
                                               a.TypeName(), " and ", b.TypeName()));
    };
    if (op == "<" || op == ">" || op == "<=" || op == ">=") {
      int cmp;
      if (a.is_number() && b.is_number()) {
        cmp = a.as_number() < b.as_number() ? -1 : a.as_number() > b.as_number() ? 1 : 0;
      } else if (a.is_string() && b.is_string()) {
        cmp = a.as_string().compare(b.as_string());
      } else {
        return type_error();
      }
      const bool r = op == "<" ? cmp < 0 : op == ">" ? cmp > 0 : op == "<=" ? cmp <= 0 : cmp >= 0;
      return Value::Bool(r);
    }
    if (op == "+") {
      if (a.is_string() && b.is_string()) return Value::String(a.as_string() + b.as_string());
      if (a.is_list() && b.is_list()) {
        ValueList out = a.as_list();
        out.insert(out.end(), b.as_list().begin(), b.as_list().end());
        return Value::List(std::move(out));
      }
    }
    if (op == "*" && (a.is_string() || a.is_list()) && b.is_int()) {
      if (a.is_string()) {
        std::string out;
        for (int64_t i = 0; i < b.as_int(); ++i) out += a.as_string();
        return Value::String(std::move(out));
      }
      ValueList out;
      for (int64_t i = 0; i < b.as_int(); ++i) {
        out.insert(out.end(), a.as_list().begin(), a.as_list().end());
      }
      return Value::List(std::move(out));
    }
    const bool numeric = (a.is_number() || a.is_bool()) && (b.is_number() || b.is_bool());
    if (!numeric) return type_error();
    const bool ints = !a.is_float() && !b.is_float();
    const int64_t ai = a.is_bool() ? a.as_bool() : a.as_int();
    const int64_t bi = b.is_bool() ? b.as_bool() : b.as_int();
    const double af = a.is_bool() ? ai : a.as_number(), bf = b.is_bool() ? bi : b.as_number();
    if (op == "+") return ints ? Value::Int(ai + bi) : Value::Float(af + bf);
    if (op == "-") return ints ? Value::Int(ai - bi) : Value::Float(af - bf);
    if (op == "*") return ints ? Value::Int(ai * bi) : Value::Float(af * bf);
    if (op == "**") {
      if (ints && bi >= 0) {
        int64_t r = 1;
        for (int64_t i = 0; i < bi && i < 64; ++i) r *= ai;
        return Value::Int(r);
      }
      return Value::Float(std::pow(af, bf));
    }
    if ((op == "/" || op == "//" || op == "%") && (ints ? bi == 0 : bf == 0.0)) {
      return RuntimeError(e.line, "division by zero");
    }
    if (op == "/") return Value::Float(af / bf);
    if (op == "//") {
      if (ints) {
        int64_t q = ai / bi;
        if ((ai % bi != 0) && ((ai < 0) != (bi < 0))) --q;
        return Value::Int(q);
      }
      return Value::Float(std::floor(af / bf));
    }
    if (op == "%") {
      if (ints) {
        int64_t r = ai % bi;
        if (r != 0 && ((r < 0) != (bi < 0))) r += bi;
        return Value::Int(r);
      }
      double r = std::fmod(af, bf);
      if (r != 0 && ((r < 0) != (bf < 0))) r += bf;
      return Value::Float(r);
    }
    return type_error();
  }

  absl::StatusOr<bool> Contains(const Value& container, const Value& item, int line) {
    if (container.is_undefined()) return false;
    if (container.is_string()) {
      if (!item.is_string()) {
        return RuntimeError(line, "'in <string>' requires a string as left operand");
      }
      return container.as_string().find(item.as_string()) != std::string::npos;
    }
    if (container.is_list()) {
      for (const Value& v : container.as_list()) {
        if (v.Equals(item)) return true;
      }
      return false;
    }
    if (container.is_map()) {
      return item.is_string() && container.as_map().Find(item.as_string()) != nullptr;
    }
    return RuntimeError(
        line, absl::StrCat("argument of type ", container.TypeName(), " is not iterable"));
  }

  std::vector<ValueMap> frames_;  // innermost last
  absl::Time now_;
  int64_t iterations_ = 0;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Template>> Template::Parse(absl::string_view source) {
  ASSIGN_OR_RETURN(Body body, ParseTemplate(source));
  return std::unique_ptr<Template>(new Template(std::move(body)));
}

absl::StatusOr<std::string> Template::Render(const ValueMap& variables, absl::Time now) const {
  Renderer renderer(variables, now);
  std::string out;
  RETURN_IF_ERROR(renderer.RenderBody(body_, &out).status());
  return out;
}

}  // namespace squeeze::jinja
