#!/usr/bin/env python3
"""Codebase benchmark tasks from the CPython standard library: fixed contexts of real code.

The contexts are held out from the code model (tools/train_code_model.py never trains on any
standard library), and the same files give the same tasks everywhere: pass the directory the
benchmark is defined on (Debian's /usr/lib/python3.11, carried to the GPU machine for GPU runs).
Every file records the directory and a fingerprint of the files read (`stdlib_fp`).

Sources: every *.py file under --stdlib except site-packages/dist-packages (installed packages,
not the standard library), __pycache__, lib-dynload, config-*, generated codec tables
(encodings/cp*.py etc.), _sysconfigdata*, files that do not parse, and nearly empty files.
A *group* is a top-level package (asyncio/, email/, ..., with its subpackages) or "." for the
top-level modules. A file enters a context as a block

    # file: <path relative to --stdlib>
    <the file's text, ending with a newline>

blocks joined by one blank line ("\\n") - file_block() below; the code model is trained on the
same layout, so a context reads like the code it was trained on.

1. retrieval-<L/1024>k.jsonl - complete a function signature seen far back in the context.
   A context is consecutive files (sorted by path) of one group, filled to L - --reserve tokens,
   the last file cut at a line boundary. A task picks a function or method (module level, or in
   a module-level class) whose whole signature is one line ending in ':' (nothing after it), with
   at least one parameter besides self/cls, not a dunder, whose first parameter starts with a
   letter (a clean token boundary after the '('), whose name is defined exactly once in the
   context (no other `def NAME(` at any depth), and whose `def` lies at least --min-distance
   tokens before the end of the context. The question continues the context as code:

       question = "\\n\\n# <Class.>NAME in <path>\\n" + [class line + "\\n" + indent]
                  + ["async "] + "def NAME("
       (a method's question repeats its class's header line and indentation, so that it reads
       as the code it completes)
       answer   = the rest of the signature line, e.g. "self, key, default=None) -> str:"

   Records (the accuracy bench's schema, tools/retrieval_tasks.py's fields plus more):
     id, variant ("code-sig"), context, question, answer, context_id (tasks of one context are
     consecutive and share it: register the context once), context_tokens, length (L), group,
     path, line, name, distance_tokens (def -> end of context), distance_chars, tokens ("exact"
     from --tokenizer or "estimate" at --chars-per-token), stdlib_fp.
   Judging as bench/accuracy_bench.cc does: register `context` (with BOS), send `question` as
   the Generate input, greedy, stop at "\\n", compare the generated text stripped with `answer`
   stripped. Answers are at most --max-answer-tokens tokens (the bench's cap is 48).
   --no-context also writes retrieval-<L>k-noctx.jsonl: the same tasks, variant "code-sig-noctx",
   with the context replaced by the defining file's header line only ("# file: <path>\\n"): a
   model must mostly fail these, which shows that the answers come from the context.

2. loss-<L/1024>k.jsonl - per-token loss of a module's remainder given its package.
   For a module M of a group (M long enough), the context is other modules of the group (M's own
   directory first, then by path; whole files, the last one cut at a line boundary) followed by
   the block of M cut after its first part (--prefix-frac of the length, at a line boundary);
   the continuation is the next --continuation-tokens tokens of M (cut at a line end when
   estimating). context + continuation fits in L tokens. Records:
     id, variant ("code-loss"), context, continuation, module_context (the tail of `context`
     that belongs to M: "# file: M\\n" + M's beginning), group, path, length, context_tokens,
     module_context_tokens, continuation_tokens, tokens, stdlib_fp.
   Scoring (the runner's job): mean per-token cross entropy of the continuation's tokens given
   [BOS] + context (the continuation tokenized on its own, as a Generate input; it starts at a
   line start), given [BOS] + module_context (the module alone) and given [BOS] only (no
   context); the differences are what the package's other modules and the module's own
   beginning are worth.

Token counts: with --tokenizer (a tokenizer.json or a directory holding one) and the
`tokenizers` module, or with --tokenize-server (a running squeeze-server's Tokenize RPC: the
model's tokenizer as the server runs it), they are exact (every context is encoded once at the
end); otherwise they are estimated at --chars-per-token (3.2) and the summary says so - then
context lengths are approximate and the bench's 1K buckets may split a length.

Determinism: one seed (--seed); every choice uses random.Random("codebase:<seed>:<what>"), which
Python hashes with SHA-512 (stable across runs and PYTHONHASHSEED). Standard library only.

    /usr/bin/python3 tools/codebase_tasks.py --stdlib /usr/lib/python3.11 --out /tmp/codebench \\
        --no-context --summary
"""

from __future__ import annotations

import argparse
import ast
import bisect
import dataclasses
import hashlib
import json
import os
import random
import re
import sys
import sysconfig
import time
from typing import Optional

CHARS_PER_TOKEN = 3.2
SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", "lib-dynload"}
BUCKET_SLACK = 448  # a retrieval context has at least length - this many tokens (bench: +-512)
GENERATED_CODEC = "Python Character Mapping Codec"  # gencodec.py's tables (encodings/cp*.py)


def file_block(relpath: str, text: str) -> str:
    """One file as it appears in a context (and in the code model's training rows)."""
    if not text.endswith("\n"):
        text += "\n"
    return f"# file: {relpath}\n{text}"


BLOCK_SEP = "\n"  # between blocks: each block ends with "\n", so files are one blank line apart


# ----------------------------------------------------------------------------------------------
# Token counting: exact through a tokenizer.json, or estimated from characters.

class ServerTokenizer:
    """The `tokenizers` module's encode_batch, through a running squeeze-server's Tokenize RPC:
    the model's own tokenizer as the server counts (for machines without the module). Each text
    is sent in pieces cut just after a newline that a non-space character follows, where no
    pre-token of a byte-level BPE spans the cut, so the counts equal one encoding of the whole;
    a token's start is the sum of the bytes of the pieces before it (checked to add up to the
    text)."""

    PIECE_CHARS = 60_000

    class _Encoding:
        def __init__(self, offsets):
            self.offsets = offsets

    def __init__(self, address: str):
        import squeeze  # the Python client (client/python), with its generated modules
        self.client = squeeze.Client(address, timeout=600)

    def _cuts(self, text: str) -> list[int]:
        cuts, a = [0], 0
        while len(text) - a > self.PIECE_CHARS:
            b = a + self.PIECE_CHARS
            while b > a and not (text[b - 1] == "\n" and not text[b].isspace()):
                b -= 1
            if b == a:  # no safe cut in this piece: take the rest whole
                break
            cuts.append(b)
            a = b
        cuts.append(len(text))
        return cuts

    def encode_batch(self, texts: list[str], add_special_tokens: bool = False):
        assert not add_special_tokens
        out = []
        for text in texts:
            offsets = []
            cuts = self._cuts(text)
            for a, b in zip(cuts, cuts[1:]):
                piece = text[a:b]
                raw = piece.encode("utf-8")
                # character index of every byte offset (a byte inside a character maps to it)
                char_at = [0] * (len(raw) + 1)
                pos = 0
                for i, ch in enumerate(piece):
                    n = len(ch.encode("utf-8"))
                    for k in range(n):
                        char_at[pos + k] = i
                    pos += n
                char_at[len(raw)] = len(piece)
                byte = 0
                for tok in self.client.tokenize(piece).pieces:
                    offsets.append((a + char_at[byte], None))
                    byte += len(tok)
                if byte != len(raw):
                    raise RuntimeError(f"the server's token pieces cover {byte} of {len(raw)} "
                                       "bytes: not a byte-level tokenizer; use --tokenizer")
            out.append(self._Encoding(offsets))
        return out


class Measure:
    """Token counts of texts. `starts(text)` -> sorted token start offsets (characters), or None
    when estimating; tokens_in(starts, text, a, b) counts the tokens starting in [a, b)."""

    def __init__(self, tokenizer: Optional[str], chars_per_token: float,
                 server: Optional[str] = None):
        self.cpt = chars_per_token
        self.tok = None
        self.note = f"estimated at {chars_per_token} characters per token"
        if server:
            self.tok = ServerTokenizer(server)
            self.note = f"exact, from the server at {server}"
        elif tokenizer:
            path = os.path.join(tokenizer, "tokenizer.json") if os.path.isdir(tokenizer) \
                else tokenizer
            try:
                from tokenizers import Tokenizer  # optional: exact counts
            except ImportError:
                print(f"note: the `tokenizers` module is not installed; token counts are "
                      f"{self.note}, not from {path}", file=sys.stderr)
            else:
                self.tok = Tokenizer.from_file(path)
                self.note = f"exact, from {path}"

    @property
    def exact(self) -> bool:
        return self.tok is not None

    def starts_batch(self, texts: list[str]) -> list[Optional[list[int]]]:
        if self.tok is None:
            return [None] * len(texts)
        encs = self.tok.encode_batch(texts, add_special_tokens=False)
        return [[o[0] for o in e.offsets] for e in encs]

    def starts(self, text: str) -> Optional[list[int]]:
        return self.starts_batch([text])[0]

    def count(self, starts: Optional[list[int]], a: int, b: int) -> int:
        if starts is None:
            return int(round((b - a) / self.cpt))
        return bisect.bisect_left(starts, b) - bisect.bisect_left(starts, a)

    def cut(self, starts: Optional[list[int]], text: str, a: int, max_tokens: int) -> int:
        """The largest line boundary b >= a of `text` (just after a newline, or a itself) with
        count(a, b) <= max_tokens."""
        if starts is None:
            limit = a + int(max_tokens * self.cpt)
        else:
            i = bisect.bisect_left(starts, a) + max_tokens
            limit = starts[i] if i < len(starts) else len(text)
        limit = min(limit, len(text))
        if limit >= len(text):
            return len(text)
        nl = text.rfind("\n", a, limit)
        return a if nl < 0 else nl + 1


# ----------------------------------------------------------------------------------------------
# Sources.

@dataclasses.dataclass
class Source:
    relpath: str
    group: str
    text: str
    block: str = ""
    starts: Optional[list[int]] = None  # token starts within `block` (exact mode)
    tokens: int = 0  # tokens of `block`
    _defs: Optional[list] = None


def group_of(relpath: str) -> str:
    head, _, rest = relpath.partition("/")
    return head if rest else "."


def collect_sources(stdlib: str) -> list[Source]:
    """The standard library's Python files, sorted by path (see the module docstring for what
    is left out)."""
    out = []
    for root, dirs, files in os.walk(stdlib):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith(".")
                         and not d.startswith("config-"))
        for name in sorted(files):
            if not name.endswith(".py") or name.startswith("_sysconfigdata"):
                continue
            path = os.path.join(root, name)
            rel = os.path.relpath(path, stdlib).replace(os.sep, "/")
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
            except (UnicodeDecodeError, OSError):
                continue
            if GENERATED_CODEC in text[:400] or len("".join(text.split())) < 64:
                continue
            try:
                ast.parse(text)
            except (SyntaxError, ValueError):
                continue
            out.append(Source(rel, group_of(rel), text))
    out.sort(key=lambda s: s.relpath)
    return out


def fingerprint(sources: list[Source]) -> str:
    h = hashlib.sha256()
    for s in sources:
        h.update(s.relpath.encode() + b"\0" + s.text.encode() + b"\0")
    return h.hexdigest()[:16]


def measure_sources(sources: list[Source], measure: Measure) -> None:
    blocks = [file_block(s.relpath, s.text) for s in sources]
    starts = measure.starts_batch(blocks)
    for s, b, st in zip(sources, blocks, starts):
        s.block, s.starts = b, st
        s.tokens = measure.count(st, 0, len(b))


@dataclasses.dataclass
class Def:
    name: str
    qualname: str
    is_async: bool
    line: int  # 1-based line of `def`
    offset: int  # offset of `def` (or `async`) in the block
    line_end: int  # offset just after the signature line's text (before its newline)
    answer: str
    # What the question puts before `def`, so that it reads as code: for a method, its class's
    # header line (or "class NAME:" when that spans lines) and the method's indentation.
    prefix: str = ""


_DUNDER = re.compile(r"^__\w+__$")


def signature_defs(src: Source) -> list[Def]:
    """Functions and methods (module level, or in a module-level class) with a one-line
    signature that the retrieval task can ask for (see the module docstring)."""
    if src._defs is not None:
        return src._defs
    tree = ast.parse(src.text)
    lines = src.text.split("\n")
    header = len(f"# file: {src.relpath}\n")  # the block starts with it, then the text
    line_offsets = [0]
    for l in lines:
        line_offsets.append(line_offsets[-1] + len(l) + 1)
    found = []

    def visit(node, cls: Optional[ast.ClassDef]):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return
        name = node.name
        if _DUNDER.match(name):
            return
        a = node.args
        params = [x.arg for x in a.posonlyargs + a.args]
        if cls is not None and params and params[0] in ("self", "cls"):
            params = params[1:]
        n_params = len(params) + len(a.kwonlyargs) + (a.vararg is not None) + \
            (a.kwarg is not None)
        if n_params == 0:
            return
        text = lines[node.lineno - 1]
        m = re.match(r"^(\s*)(async\s+)?def\s+" + re.escape(name) + r"\(", text)
        if m is None:
            return
        answer = text[m.end():].rstrip()
        if not answer.endswith(":") or not answer[:1].isascii() or not answer[:1].isalpha():
            return
        if not node.body or node.body[0].lineno <= node.lineno:
            return
        try:  # the line alone is a whole signature (no comment, no body after the colon)
            ast.parse("def " + name + "(" + answer + "\n    pass\n")
        except SyntaxError:
            return
        start = line_offsets[node.lineno - 1] + len(m.group(1))
        prefix = ""
        if cls is not None:
            class_line = lines[cls.lineno - 1].rstrip()
            if not (class_line.startswith("class ") and class_line.endswith(":")):
                class_line = f"class {cls.name}:"
            prefix = class_line + "\n" + m.group(1)
        found.append(Def(name, f"{cls.name}.{name}" if cls else name, m.group(2) is not None,
                         node.lineno, header + start,
                         header + line_offsets[node.lineno - 1] + len(text.rstrip()), answer,
                         prefix))

    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            for sub in node.body:
                visit(sub, node)
        else:
            visit(node, None)
    src._defs = found
    return found


# ----------------------------------------------------------------------------------------------
# Contexts.

@dataclasses.dataclass
class Part:
    src: Source
    end: int  # characters of src.block used (a prefix)


@dataclasses.dataclass
class Context:
    id: str
    group: str
    parts: list[Part]
    text: str = ""
    offsets: list[int] = dataclasses.field(default_factory=list)  # each part's start in text
    tokens: int = 0
    starts: Optional[list[int]] = None

    def assemble(self) -> None:
        pieces, pos = [], 0
        self.offsets = []
        for i, p in enumerate(self.parts):
            if i:
                pieces.append(BLOCK_SEP)
                pos += len(BLOCK_SEP)
            self.offsets.append(pos)
            piece = p.src.block[:p.end]
            pieces.append(piece)
            pos += len(piece)
        self.text = "".join(pieces)


def fill(measure: Measure, files: list[Source], budget: int) -> tuple[list[Part], int, int]:
    """Whole files in order while they fit into `budget` tokens, then the next one cut at a line
    boundary (if a line of it fits). -> (parts, tokens, number of files used)."""
    parts, used = [], 0
    for s in files:
        if used >= budget:
            break
        if used + s.tokens <= budget:
            parts.append(Part(s, len(s.block)))
            used += s.tokens
            continue
        end = measure.cut(s.starts, s.block, 0, budget - used)
        if end > len(f"# file: {s.relpath}\n"):
            parts.append(Part(s, end))
            used += measure.count(s.starts, 0, end)
        break
    return parts, used, len(parts)


def retrieval_contexts(measure: Measure, groups: dict, length: int, args) -> list[Context]:
    """Consecutive files of each group, filled to the budget. A group's remainder that cannot
    fill it to within BUCKET_SLACK tokens of `length` gives no context: the accuracy bench
    tables a context under its length rounded to 1K, so every context must round to `length`."""
    budget = length - args.reserve
    least = max(args.min_fill * budget, length - BUCKET_SLACK)
    out = []
    for g, files in groups.items():
        i, k = 0, 0
        while i < len(files):
            parts, used, n = fill(measure, files[i:], budget)
            if used < least:
                break
            out.append(Context(f"r{length // 1024}k-{g}-{k}", g, parts))
            k += 1
            i += max(n, 1)  # the rest of a file cut short is not used
    return out


def finish(measure: Measure, ctxs: list[Context]) -> None:
    """Assembles the texts and measures them (exactly: one encoding per context)."""
    for c in ctxs:
        c.assemble()
    starts = measure.starts_batch([c.text for c in ctxs])
    for c, st in zip(ctxs, starts):
        c.starts = st
        c.tokens = measure.count(st, 0, len(c.text))


def interleave(rng: random.Random, by_group: dict) -> list:
    """Items of all groups, round-robin over the groups in a seeded order (each group's items
    keep their order), so that no one group (the top-level modules are a third of the library)
    dominates the first tasks."""
    order = sorted(by_group)
    rng.shuffle(order)
    queues = [list(by_group[g]) for g in order]
    out = []
    while any(queues):
        for q in queues:
            if q:
                out.append(q.pop(0))
    return out


def retrieval_tasks(measure: Measure, groups: dict, length: int, args, fp: str) -> list[dict]:
    ctxs = retrieval_contexts(measure, groups, length, args)
    finish(measure, ctxs)
    by_group = {}
    for c in ctxs:
        by_group.setdefault(c.group, []).append(c)
    rng = random.Random(f"codebase:{args.seed}:retrieval:{length}")
    tasks = []
    for c in interleave(rng, by_group):
        if len(tasks) >= args.n:
            break
        candidates = []
        for part, base in zip(c.parts, c.offsets):
            for d in signature_defs(part.src):
                if d.line_end >= part.end:  # the signature line is not (wholly) in the context
                    continue
                pos = base + d.offset
                dist = measure.count(c.starts, pos, len(c.text))
                if dist < args.min_distance:
                    continue
                if len(re.findall(r"\bdef\s+" + re.escape(d.name) + r"\s*\(", c.text)) != 1:
                    continue
                if measure.count(measure.starts(d.answer), 0, len(d.answer)) > \
                        args.max_answer_tokens:
                    continue
                candidates.append((d, part.src, pos, dist))
        crng = random.Random(f"codebase:{args.seed}:pick:{c.id}")
        crng.shuffle(candidates)
        chosen = sorted(candidates[:min(args.max_per_context, args.n - len(tasks))],
                        key=lambda x: x[2])
        for d, src, pos, dist in chosen:
            question = f"\n\n# {d.qualname} in {src.relpath}\n{d.prefix}" + \
                ("async " if d.is_async else "") + f"def {d.name}("
            tasks.append({
                "id": f"{c.id}-{d.name}", "variant": "code-sig", "context": c.text,
                "question": question, "answer": d.answer, "context_id": c.id,
                "context_tokens": c.tokens, "length": length, "group": c.group,
                "path": src.relpath, "line": d.line, "name": d.name, "distance_tokens": dist,
                "distance_chars": len(c.text) - pos,
                "tokens": "exact" if measure.exact else "estimate", "stdlib_fp": fp})
    return tasks


def no_context(tasks: list[dict]) -> list[dict]:
    out = []
    for t in tasks:
        u = dict(t)
        u.update(id=t["id"] + "-noctx", variant="code-sig-noctx",
                 context=f"# file: {t['path']}\n", context_id=t["context_id"] + "-noctx-" +
                 t["path"], context_tokens=None, distance_tokens=None, distance_chars=None)
        out.append(u)
    # One context per defining file: keep each file's tasks together.
    out.sort(key=lambda u: (u["context_id"], u["id"]))
    return out


def loss_tasks(measure: Measure, groups: dict, length: int, args, fp: str) -> list[dict]:
    cont = args.continuation_tokens
    budget = length - cont - args.reserve
    rng = random.Random(f"codebase:{args.seed}:loss:{length}")
    by_group = {}
    for g, files in groups.items():
        total = sum(s.tokens for s in files)
        if total < args.min_fill * budget + cont:
            continue
        ms = [s for s in files if s.tokens >= 2 * cont + len(f"# file: {s.relpath}\n")]
        grng = random.Random(f"codebase:{args.seed}:loss:{length}:{g}")
        grng.shuffle(ms)
        if ms:
            by_group[g] = ms[:args.loss_per_group]
    ctxs, meta = [], []
    for m in interleave(rng, by_group):
        if len(ctxs) >= args.loss_n:
            break
        header = len(f"# file: {m.relpath}\n")
        # M's beginning: --prefix-frac of the budget, leaving at least `cont` tokens after it.
        want = min(int(args.prefix_frac * budget), m.tokens - cont - 8)
        split = measure.cut(m.starts, m.block, 0, want)
        if split <= header:
            continue
        prefix_tokens = measure.count(m.starts, 0, split)
        mdir = m.relpath.rsplit("/", 1)[0] if "/" in m.relpath else ""
        others = [s for s in groups[m.group] if s is not m]
        others.sort(key=lambda s: ((s.relpath.rsplit("/", 1)[0] if "/" in s.relpath else "")
                                   != mdir, s.relpath))
        parts, used, _ = fill(measure, others, budget - prefix_tokens)
        if used + prefix_tokens < args.min_fill * budget:
            continue
        parts.append(Part(m, split))
        if measure.exact:
            i = bisect.bisect_left(m.starts, split) + cont
            end = m.starts[i] if i < len(m.starts) else len(m.block)
        else:
            end = m.block.find("\n", split + int(cont * measure.cpt))
            end = len(m.block) if end < 0 else end + 1
        ctxs.append(Context(f"l{length // 1024}k-{m.relpath}", m.group, parts))
        meta.append((m, split, end))
    finish(measure, ctxs)
    tasks = []
    for c, (m, split, end) in zip(ctxs, meta):
        module_context = m.block[:split]
        continuation = m.block[split:end]
        tasks.append({
            "id": c.id, "variant": "code-loss", "context": c.text, "continuation": continuation,
            "module_context": module_context, "group": c.group, "path": m.relpath,
            "length": length, "context_tokens": c.tokens,
            "module_context_tokens": measure.count(m.starts, 0, split),
            "continuation_tokens": measure.count(measure.starts(continuation), 0,
                                                 len(continuation)),
            "tokens": "exact" if measure.exact else "estimate", "stdlib_fp": fp})
    return tasks


# ----------------------------------------------------------------------------------------------
# Summary and main.

def _stats(xs: list) -> str:
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return "-"
    q = lambda f: xs[min(len(xs) - 1, int(f * len(xs)))]  # noqa: E731
    return f"min {xs[0]}, p10 {q(0.1)}, median {q(0.5)}, p90 {q(0.9)}, max {xs[-1]}"


def summarize(kind: str, length: int, tasks: list[dict]) -> str:
    ctx = {}
    for t in tasks:
        ctx.setdefault(t["context_id"] if "context_id" in t else t["id"], t["context_tokens"])
    groups = {}
    for t in tasks:
        groups[t["group"]] = groups.get(t["group"], 0) + 1
    top = ", ".join(f"{g} {n}" for g, n in sorted(groups.items(), key=lambda x: -x[1])[:8])
    lines = [f"{kind} {length // 1024}K: {len(tasks)} tasks, {len(ctx)} contexts from "
             f"{len(groups)} groups ({top}{', ...' if len(groups) > 8 else ''})",
             f"  context tokens: {_stats(list(ctx.values()))}"]
    if kind == "retrieval":
        lines.append(f"  distance def -> end (tokens): {_stats([t['distance_tokens'] for t in tasks])}")
        lines.append(f"  answer chars: {_stats([len(t['answer']) for t in tasks])}")
    else:
        lines.append(f"  module context tokens: "
                     f"{_stats([t['module_context_tokens'] for t in tasks])}")
        lines.append(f"  continuation tokens: {_stats([t['continuation_tokens'] for t in tasks])}")
    return "\n".join(lines)


def write_jsonl(path: str, rows: list[dict]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stdlib", default=sysconfig.get_paths()["stdlib"],
                   help="the standard library directory (default: this Python's, %(default)s)")
    p.add_argument("--out", required=True, help="output directory for the JSONL files")
    p.add_argument("--lengths", default="8192,16384", help="context lengths in tokens")
    p.add_argument("--kinds", default="retrieval,loss")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer.json (or its directory) for exact token counts; needs the "
                        "`tokenizers` module")
    p.add_argument("--tokenize-server", default=None, metavar="HOST:PORT",
                   help="exact token counts from a running squeeze-server's Tokenize RPC (its "
                        "model's tokenizer; needs the Python client on PYTHONPATH)")
    p.add_argument("--chars-per-token", type=float, default=CHARS_PER_TOKEN,
                   help="estimate without a tokenizer (default %(default)s)")
    p.add_argument("--reserve", type=int, default=128,
                   help="tokens of the length kept for the question and answer (retrieval) or "
                        "as slack (loss)")
    p.add_argument("--min-fill", type=float, default=0.9,
                   help="drop contexts shorter than this fraction of their budget")
    # Retrieval.
    p.add_argument("--n", type=int, default=500, help="retrieval tasks per length")
    p.add_argument("--min-distance", type=int, default=4096,
                   help="tokens from a def to the end of its context, at least")
    p.add_argument("--max-per-context", type=int, default=24)
    p.add_argument("--max-answer-tokens", type=int, default=40)
    p.add_argument("--no-context", action="store_true",
                   help="also write the retrieval tasks without their contexts (*-noctx.jsonl)")
    # Loss.
    p.add_argument("--loss-n", type=int, default=100, help="loss tasks per length")
    p.add_argument("--loss-per-group", type=int, default=12)
    p.add_argument("--continuation-tokens", type=int, default=512)
    p.add_argument("--prefix-frac", type=float, default=0.25,
                   help="the module's own beginning, as a fraction of the context")
    p.add_argument("--summary", action="store_true")
    args = p.parse_args(argv)
    args.lengths = [int(x) for x in args.lengths.split(",") if x]
    args.kinds = [k for k in args.kinds.split(",") if k]
    for k in args.kinds:
        if k not in ("retrieval", "loss"):
            p.error(f"unknown kind '{k}'; expected retrieval and/or loss")
    for L in args.lengths:
        if L - args.reserve <= args.min_distance and "retrieval" in args.kinds:
            p.error(f"length {L} leaves no room for --min-distance {args.min_distance}")
        if L - args.reserve - args.continuation_tokens <= 0 and "loss" in args.kinds:
            p.error(f"length {L} is too short for --continuation-tokens")
    if not os.path.isdir(args.stdlib):
        p.error(f"--stdlib {args.stdlib} is not a directory")
    return args


def main(argv=None) -> int:
    t0 = time.time()
    args = parse_args(argv)
    measure = Measure(args.tokenizer, args.chars_per_token, args.tokenize_server)
    sources = collect_sources(args.stdlib)
    if not sources:
        print(f"error: no Python files under {args.stdlib}", file=sys.stderr)
        return 2
    fp = fingerprint(sources)
    measure_sources(sources, measure)
    groups = {}
    for s in sources:
        groups.setdefault(s.group, []).append(s)
    os.makedirs(args.out, exist_ok=True)
    report = [f"stdlib {os.path.abspath(args.stdlib)}: {len(sources)} files, "
              f"{sum(len(s.text) for s in sources) / 1e6:.1f}M characters, "
              f"{sum(s.tokens for s in sources) / 1e6:.2f}M tokens in {len(groups)} groups; "
              f"fingerprint {fp}; tokens {measure.note}"]
    manifest = {"stdlib": os.path.abspath(args.stdlib), "stdlib_fp": fp, "files": len(sources),
                "tokens": measure.note, "args": {k: v for k, v in vars(args).items()},
                "outputs": {}}
    def emit(filename, tasks, wanted=None, kind=""):
        """Writes one task file and records it; warns when fewer than `wanted` tasks were made."""
        if wanted is not None and len(tasks) < wanted:
            print(f"warning: only {len(tasks)} {kind} tasks at {L} (asked {wanted})",
                  file=sys.stderr)
        write_jsonl(os.path.join(args.out, filename), tasks)
        manifest["outputs"][filename] = len(tasks)

    for L in args.lengths:
        name = f"{L // 1024}k" if L % 1024 == 0 else str(L)
        if "retrieval" in args.kinds:
            tasks = retrieval_tasks(measure, groups, L, args, fp)
            emit(f"retrieval-{name}.jsonl", tasks, args.n, "retrieval")
            report.append(summarize("retrieval", L, tasks))
            if args.no_context:
                emit(f"retrieval-{name}-noctx.jsonl", no_context(tasks))
        if "loss" in args.kinds:
            tasks = loss_tasks(measure, groups, L, args, fp)
            emit(f"loss-{name}.jsonl", tasks, args.loss_n, "loss")
            report.append(summarize("loss", L, tasks))
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    report.append(f"wrote {', '.join(f'{k} ({v})' for k, v in manifest['outputs'].items())} "
                  f"to {args.out} in {time.time() - t0:.1f} s")
    if args.summary:
        print("\n".join(report))
    else:
        print(report[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
