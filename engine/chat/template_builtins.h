// The filters, tests, methods and global functions chat templates call (Python / Jinja2
// semantics), used by the renderer in template_engine.cc.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "engine/chat/template_value.h"

namespace squeeze::jinja {

// Arguments of one call: positional values and keyword values.
struct CallArgs {
  std::vector<Value> args;
  std::vector<std::pair<std::string, Value>> kwargs;

  // The argument at position `i` or with keyword `name`, else `fallback`.
  const Value& Get(size_t i, absl::string_view name, const Value& fallback) const;
};

// `value | name(args)`. `apply_test` lets filters such as selectattr run tests.
absl::StatusOr<Value> ApplyFilter(absl::string_view name, const Value& value, const CallArgs& args);
// `value is name(args)`.
absl::StatusOr<bool> ApplyTest(absl::string_view name, const Value& value, const CallArgs& args);
// `value.name(args)` for str and dict methods.
absl::StatusOr<Value> CallMethod(const Value& value, absl::string_view name, const CallArgs& args);
// Global functions: namespace, range, dict, strftime_now (raise_exception is the renderer's).
bool IsGlobalFunction(absl::string_view name);
absl::StatusOr<Value> CallGlobal(absl::string_view name, const CallArgs& args, absl::Time now);

// Python's str.isspace for one code point.
bool IsPythonSpace(char32_t c);

}  // namespace squeeze::jinja
