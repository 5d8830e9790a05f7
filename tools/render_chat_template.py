#!/usr/bin/python3
"""Renders chat templates with Python's jinja2 exactly as transformers' apply_chat_template does,
the reference for the C++ renderer (engine/chat/, tests/cpu/chat_template_test.cc).

    /usr/bin/python3 tools/render_chat_template.py TEMPLATE.jinja CASES.json

CASES.json: {"bos_token": ..., "eos_token": ..., "unk_token": ..., "pad_token": ...,
"now": "2024-07-26T00:00:00", "conversations": [[{"role": ..., "content": ...}, ...], ...]}.
Prints JSON: for every conversation and add_generation_prompt in (false, true), in that order,
{"text": rendered} or {"error": message}. Needs only Debian's python3-jinja2.

The environment is transformers' (chat_template_utils._compile_jinja_template): an
ImmutableSandboxedEnvironment with trim_blocks, lstrip_blocks and loop controls, tojson replaced
by json.dumps(ensure_ascii=False), globals raise_exception and strftime_now; render() gets
messages, tools=None, documents=None, add_generation_prompt and the special-token strings.
"""

import datetime
import json
import sys

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment


class TemplateError(Exception):
    pass


def compile_template(source, now):
    def raise_exception(message):
        raise TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    def strftime_now(fmt):
        return now.strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env.from_string(source)


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        source = f.read()
    with open(sys.argv[2], encoding="utf-8") as f:
        cases = json.load(f)
    now = datetime.datetime.fromisoformat(cases.get("now", "2024-07-26T00:00:00"))
    template = compile_template(source, now)
    tokens = {k: cases.get(k, "") for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    out = []
    for messages in cases["conversations"]:
        for add_generation_prompt in (False, True):
            try:
                text = template.render(messages=messages, tools=None, documents=None,
                                       add_generation_prompt=add_generation_prompt, **tokens)
                out.append({"text": text})
            except Exception as e:  # the template's own errors and jinja2's
                out.append({"error": f"{type(e).__name__}: {e}"})
    json.dump(out, sys.stdout, ensure_ascii=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
