// The syntax tree of a parsed chat template (engine/chat/template_parser.h builds it,
// engine/chat/template_engine.cc evaluates it).
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/chat/template_value.h"

namespace squeeze::jinja {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Type {
    kLiteral,      // value
    kName,         // name
    kList,         // args = items
    kDict,         // args = key0, value0, key1, value1, ...
    kAttribute,    // args[0].name
    kSubscript,    // args[0][args[1]]
    kSlice,        // args[0][args[1]:args[2]:args[3]], absent parts null
    kCall,         // args[0](args[1..], kwargs)
    kFilter,       // args[0] | name(args[1..], kwargs)
    kTest,         // args[0] is [not] name(args[1..])
    kUnary,        // name (not, -, +) args[0]
    kBinary,       // args[0] name args[1]: or and + - * / // % ** ~ == != < > <= >= in notin
    kConditional,  // args[0] if args[1] else args[2] (args[2] null: undefined)
  };
  Type type;
  int line = 0;
  Value value;
  std::string name;
  bool negated = false;  // kTest: "is not"
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
};

struct Node;
using NodePtr = std::unique_ptr<Node>;
using Body = std::vector<NodePtr>;

struct Node {
  enum class Type {
    kText,      // text
    kOutput,    // {{ expr }}
    kIf,        // branches (cond, body); else_body
    kFor,       // {% for targets in expr [if cond] %} body [{% else %} else_body]
    kSet,       // {% set target = expr %} or {% set target.attr = expr %}
    kBreak,     // {% break %}
    kContinue,  // {% continue %}
    kBlock,     // body rendered as is ({% generation %}, transformers' assistant-mask marker)
  };
  Type type;
  int line = 0;
  std::string text;
  ExprPtr expr;
  std::vector<std::pair<ExprPtr, Body>> branches;
  Body body;
  Body else_body;
  std::vector<std::string> targets;  // kFor: loop variables; kSet: the target name
  std::string attr;                  // kSet: namespace attribute, empty for a plain name
  ExprPtr cond;                      // kFor filter
};

}  // namespace squeeze::jinja
