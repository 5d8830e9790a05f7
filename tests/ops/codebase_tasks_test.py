"""tools/codebase_tasks.py on a small synthetic standard library written to a temporary
directory: retrieval answers are the exact rest of `def NAME(` in the source, definitions lie at
least --min-distance tokens before the end of their context, names are unique in the context,
every ineligible function stays out, installed packages never enter a context, the JSONL has the
fields bench/accuracy_bench.cc reads, loss records split a module exactly, the output is
deterministic, and the exact-count path works through a stand-in `tokenizers` module."""
import json
import os
import re
import shutil
import sys
import tempfile
import types
import unittest

TOOLS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools")
sys.path.insert(0, TOOLS)
import codebase_tasks as ct  # noqa: E402

CPT = 4.0
ARGS = ["--lengths", "1024,2048", "--chars-per-token", str(CPT), "--min-distance", "256",
        "--reserve", "64", "--n", "24", "--max-per-context", "8", "--loss-n", "4",
        "--continuation-tokens", "64", "--max-answer-tokens", "16", "--no-context"]

# Functions that must never become tasks (by name).
INELIGIBLE = {"dup_name", "__init__", "no_params", "multi_line", "with_comment", "one_liner",
              "star_first", "only_self", "installed_only", "nested_inner", "_under_first"}


def module_text(tag: str, n: int) -> str:
    """A module with n eligible functions and methods plus one of each ineligible kind."""
    out = [f'"""Module {tag}: generated for the test."""\n', "import os\n", "\n\n",
           # A name defined twice is never unique in a context.
           "def dup_name(a, b):\n    return a\n\n\ndef dup_name(a, b, c):\n    return c\n\n\n"]
    for i in range(n):
        out.append(f"def {tag}_fn_{i}(path_{i}, mode=None, *rest, flag: bool = False) -> int:\n"
                   f'    """Return something about path_{i} ({tag}, {i})."""\n'
                   f"    value = len(str(path_{i})) + {i}\n"
                   f"    return value if flag else -value\n\n\n")
        if i % 3 == 0:
            out.append(f"class {tag.title()}Thing{i}:\n"
                       f"    def __init__(self, size):\n        self.size = size\n\n"
                       f"    def {tag}_method_{i}(self, other, scale=2.0):\n"
                       f"        return self.size * scale + other\n\n"
                       f"    def only_self(self):\n        return self.size\n\n\n")
    out.append("def no_params():\n    return 1\n\n\n"
               "def multi_line(alpha,\n               beta):\n    return alpha\n\n\n"
               "def with_comment(a, b):  # a trailing comment\n    return b\n\n\n"
               "def one_liner(a, b): return a\n\n\n"
               "def star_first(*args):\n    return args\n\n\n"
               "def _under_first(_x, y):\n    return y\n\n\n"
               "def outer(k):\n    def nested_inner(q, r):\n        return q\n    return k\n")
    return "".join(out)


def write_stdlib(root: str) -> None:
    files = {
        "alpha.py": module_text("alpha", 12),
        "beta.py": module_text("beta", 12),
        "gamma.py": module_text("gamma", 10),
        "delta.py": module_text("delta", 16),
        "epsilon.py": module_text("epsilon", 16),
        "pkg/__init__.py": module_text("pkginit", 4),
        "pkg/core.py": module_text("core", 14),
        "pkg/util.py": module_text("util", 14),
        "pkg/sub/deep.py": module_text("deep", 12),
        "pkg/broken.py": "def broken(:\n",  # does not parse: left out
        "site-packages/installed.py": "def installed_only(a, b):\n    return a\n" * 50,
        "dist-packages/other.py": "def installed_only(a, b):\n    return b\n" * 50,
        "pkg/__pycache__/cached.py": "def installed_only(a, b):\n    return a\n",
        "encodings/cp9999.py": '""" Python Character Mapping Codec cp9999 generated """\n'
                               + "def installed_only(a, b):\n    return a\n" * 50,
    }
    for rel, text in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class FakeEncoding:
    def __init__(self, offsets):
        self.offsets = offsets


class FakeTokenizer:
    """Words, runs of spaces and single other characters are tokens."""
    PATTERN = re.compile(r"\w+| +|\n|[^\w ]")

    @classmethod
    def from_file(cls, path):
        assert os.path.exists(path), path
        return cls()

    def encode_batch(self, texts, add_special_tokens=True):
        return [FakeEncoding([(m.start(), m.end()) for m in self.PATTERN.finditer(t)])
                for t in texts]


class CodebaseTasksTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="codebase-tasks-test-")
        cls.stdlib = os.path.join(cls.tmp, "lib")
        write_stdlib(cls.stdlib)
        cls.out = os.path.join(cls.tmp, "out")
        rc = ct.main(["--stdlib", cls.stdlib, "--out", cls.out, "--summary"] + ARGS)
        assert rc == 0

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def source(self, rel):
        with open(os.path.join(self.stdlib, rel)) as f:
            return f.read()

    def check_retrieval(self, tasks, min_distance, cpt=None):
        self.assertTrue(tasks)
        seen_contexts, last = set(), None
        for t in tasks:
            # The fields bench/accuracy_bench.cc reads, and their types.
            for key in ("context", "question", "answer", "variant"):
                self.assertIsInstance(t[key], str, key)
            self.assertEqual(t["variant"], "code-sig")
            name, ctx = t["name"], t["context"]
            self.assertNotIn(name, INELIGIBLE)
            self.assertTrue(t["question"].endswith(f"def {name}("), t["question"])
            self.assertNotIn("\n", t["answer"])  # the bench stops at a newline
            self.assertTrue(t["answer"].endswith(":"))
            # The answer is exactly the rest of the def line in the source file.
            lines = self.source(t["path"]).split("\n")
            line = lines[t["line"] - 1]
            self.assertEqual(line.split(f"def {name}(", 1)[1], t["answer"])
            # The question ends as the source reads: a method under its class's header line, at
            # its own indentation; a function at the top level.
            indent = line[:len(line) - len(line.lstrip())]
            last_lines = t["question"].split("\n")
            self.assertEqual(last_lines[-1], line.split(f"def {name}(", 1)[0] + f"def {name}(")
            if indent:
                header = next(l for l in reversed(lines[:t["line"] - 1]) if l.startswith("class "))
                self.assertEqual(last_lines[-2], header, t["question"])
            self.assertIn(f"def {name}({t['answer']}\n", ctx)
            # Unique in the context, and far enough from its end.
            self.assertEqual(len(re.findall(r"\bdef\s+" + name + r"\s*\(", ctx)), 1)
            tail = ctx[len(ctx) - t["distance_chars"]:]
            self.assertTrue(re.match(r"(async )?def " + name + r"\(", tail), tail[:40])
            self.assertGreaterEqual(t["distance_tokens"], min_distance)
            if cpt is not None:
                self.assertGreaterEqual(round(t["distance_chars"] / cpt), min_distance)
            self.assertNotIn("installed_only", ctx)
            self.assertNotIn("site-packages", ctx)
            # Tasks of one context are consecutive.
            if t["context_id"] != last:
                self.assertNotIn(t["context_id"], seen_contexts)
                seen_contexts.add(t["context_id"])
                last = t["context_id"]
            self.assertEqual(ctx.count("# file: "), len(re.findall(r"^# file: ", ctx, re.M)))

    def test_retrieval(self):
        for name, length in (("1k", 1024), ("2k", 2048)):
            tasks = read_jsonl(os.path.join(self.out, f"retrieval-{name}.jsonl"))
            self.check_retrieval(tasks, 256, CPT)
            for t in tasks:
                self.assertEqual(t["length"], length)
                self.assertLessEqual(t["context_tokens"], length - 64)
                self.assertGreaterEqual(t["context_tokens"], length - ct.BUCKET_SLACK)
            self.assertEqual(len({t["id"] for t in tasks}), len(tasks))
            self.assertEqual(len(tasks), 24)

    def test_no_context(self):
        tasks = read_jsonl(os.path.join(self.out, "retrieval-1k.jsonl"))
        stubs = read_jsonl(os.path.join(self.out, "retrieval-1k-noctx.jsonl"))
        self.assertEqual(sorted((t["question"], t["answer"]) for t in tasks),
                         sorted((t["question"], t["answer"]) for t in stubs))
        for t in stubs:
            self.assertEqual(t["context"], f"# file: {t['path']}\n")
            self.assertEqual(t["variant"], "code-sig-noctx")

    def test_loss(self):
        tasks = read_jsonl(os.path.join(self.out, "loss-2k.jsonl"))
        self.assertEqual(len(tasks), 4)
        for t in tasks:
            block = ct.file_block(t["path"], self.source(t["path"]))
            self.assertTrue(t["context"].endswith("\n" + t["module_context"]))
            self.assertTrue(block.startswith(t["module_context"] + t["continuation"]))
            self.assertTrue(t["module_context"].endswith("\n"))
            self.assertGreaterEqual(t["continuation_tokens"], 64)
            self.assertLessEqual(t["context_tokens"] + t["continuation_tokens"], 2048)
            # The other modules come from the same group, never the module itself.
            headers = re.findall(r"^# file: (\S+)$", t["context"], re.M)
            self.assertEqual(headers.count(t["path"]), 1)
            self.assertEqual(headers[-1], t["path"])
            self.assertEqual({ct.group_of(h) for h in headers}, {t["group"]})

    def test_deterministic(self):
        out2 = os.path.join(self.tmp, "out2")
        self.assertEqual(ct.main(["--stdlib", self.stdlib, "--out", out2] + ARGS), 0)
        for name in sorted(os.listdir(self.out)):
            if name.endswith(".jsonl"):
                with open(os.path.join(self.out, name), "rb") as a, \
                        open(os.path.join(out2, name), "rb") as b:
                    self.assertEqual(a.read(), b.read(), name)

    def test_exact_counts_through_a_tokenizer(self):
        fake = types.ModuleType("tokenizers")
        fake.Tokenizer = FakeTokenizer
        tok_path = os.path.join(self.tmp, "tokenizer.json")
        with open(tok_path, "w") as f:
            f.write("{}")
        saved = sys.modules.get("tokenizers")
        sys.modules["tokenizers"] = fake
        try:
            out3 = os.path.join(self.tmp, "out3")
            self.assertEqual(ct.main(["--stdlib", self.stdlib, "--out", out3, "--tokenizer",
                                      self.tmp] + ARGS), 0)
        finally:
            if saved is None:
                del sys.modules["tokenizers"]
            else:
                sys.modules["tokenizers"] = saved
        tok = FakeTokenizer()
        count = lambda s: len(tok.encode_batch([s])[0].offsets)  # noqa: E731
        tasks = read_jsonl(os.path.join(out3, "retrieval-2k.jsonl"))
        self.check_retrieval(tasks, 256)
        for t in tasks:
            self.assertEqual(t["tokens"], "exact")
            self.assertEqual(t["context_tokens"], count(t["context"]))
            self.assertEqual(t["distance_tokens"],
                             count(t["context"][len(t["context"]) - t["distance_chars"]:]))
            self.assertLessEqual(t["context_tokens"], 2048 - 64)
        for t in read_jsonl(os.path.join(out3, "loss-2k.jsonl")):
            self.assertEqual(t["continuation_tokens"], 64)
            self.assertEqual(t["context_tokens"], count(t["context"]))

    def test_exact_counts_through_the_server(self):
        """--tokenize-server: the counts of a real squeeze-server's tokenizer (the bundled code
        model's byte-level BPE), each text sent in pieces of about 200 characters, equal one
        Tokenize call of the whole text."""
        import harness
        import squeeze
        server = harness.Server(metrics=False)
        server.args[1] = "--model=" + os.path.join(harness.SOURCE_DIR, "models", "squeeze-code")
        saved = ct.ServerTokenizer.PIECE_CHARS
        ct.ServerTokenizer.PIECE_CHARS = 200  # many cuts in every file and context
        try:
            with server:
                out4 = os.path.join(self.tmp, "out4")
                self.assertEqual(ct.main(["--stdlib", self.stdlib, "--out", out4,
                                          "--tokenize-server", server.address] + ARGS), 0)
                client = squeeze.Client(server.address, timeout=60)
                count = lambda s: len(client.tokenize(s).ids)  # noqa: E731
                tasks = read_jsonl(os.path.join(out4, "retrieval-2k.jsonl"))
                self.assertGreater(len(tasks), 0)
                self.check_retrieval(tasks, 256)
                for t in tasks:
                    self.assertEqual(t["tokens"], "exact")
                    self.assertEqual(t["context_tokens"], count(t["context"]))
                    # Tokens of the context starting at the def or later; encoded alone, the
                    # def's indentation no longer joins its first word, hence one more at most.
                    tail = t["context"][len(t["context"]) - t["distance_chars"]:]
                    self.assertIn(count(tail) - t["distance_tokens"], (0, 1))
                    self.assertLessEqual(t["context_tokens"], 2048 - 64)
                losses = read_jsonl(os.path.join(out4, "loss-2k.jsonl"))
                self.assertGreater(len(losses), 0)
                for t in losses:
                    self.assertEqual(t["context_tokens"], count(t["context"]))
                    self.assertEqual(t["continuation_tokens"], count(t["continuation"]))
        finally:
            ct.ServerTokenizer.PIECE_CHARS = saved


if __name__ == "__main__":
    unittest.main()
