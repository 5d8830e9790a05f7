// A Jinja2-subset template (the syntax in engine/chat/template_parser.h), rendered the way
// transformers renders chat templates: Python value semantics, Jinja's Undefined (printing it
// gives "", using it in arithmetic or taking its attributes is an error), one scope per loop
// iteration, namespace() for values that outlive a loop, transformers' tojson (json.dumps with
// ensure_ascii=False) and its globals raise_exception() and strftime_now().
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "engine/chat/template_ast.h"
#include "engine/chat/template_value.h"

namespace squeeze::jinja {

class Template {
 public:
  // Parses `source`; InvalidArgument naming the line on a syntax error.
  static absl::StatusOr<std::unique_ptr<Template>> Parse(absl::string_view source);

  // Renders with `variables` as the template's globals. `now` is what strftime_now() formats
  // (UTC). A template's raise_exception(msg) and runtime errors (undefined values in
  // arithmetic, unknown filters, ...) return InvalidArgument with the message and line.
  absl::StatusOr<std::string> Render(const ValueMap& variables, absl::Time now) const;

 private:
  explicit Template(Body body) : body_(std::move(body)) {}
  Body body_;
};

}  // namespace squeeze::jinja
