// Parses a chat template written in the Jinja2 subset Hugging Face chat templates use, with the
// environment transformers renders them in (trim_blocks, lstrip_blocks, loop controls, no
// trailing newline kept):
//   tags       {{ expr }}  {% if / elif / else / endif %}  {% for x[, y] in expr [if cond] %} ...
//              [{% else %}] {% endfor %}  {% set name = expr %}  {% set ns.attr = expr %}
//              {% break %}  {% continue %}  {% generation %}...{% endgeneration %}  {# comment #}
//              with - / + whitespace control;
//   expr       literals (strings with Python escapes, ints, floats, true/false/none in both
//              spellings, lists, dicts), names, .attr, [index], [a:b:c], calls with keyword
//              arguments, | filters, is [not] tests, not, and, or, x if c else y, + - * / // %
//              ** ~, == != < > <= >= in, not in.
// Anything else (macros, includes, raw blocks, ...) is an error naming the line.
#pragma once

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/chat/template_ast.h"

namespace squeeze::jinja {

absl::StatusOr<Body> ParseTemplate(absl::string_view source);

}  // namespace squeeze::jinja
