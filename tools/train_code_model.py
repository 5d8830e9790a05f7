#!/usr/bin/env python3
"""Trains Squeeze's code model: a small Llama on the Python source of installed packages, 16K context.

One GPU, no network. The data is the *.py source of the packages installed in this Python
(site-packages and dist-packages: torch, transformers, jax, numpy, ...), never any file of the
CPython standard library, which holds the codebase benchmark (tools/codebase_tasks.py):

    python3 tools/train_code_model.py --prepare-only      # data + tokenizer -> build-code-data/
    python3 tools/train_code_model.py                     # <= 9 min of training -> models/squeeze-code
    python3 tools/train_code_model.py --smoke             # the whole pipeline in ~1.5 min
    python3 tools/train_code_model.py --cpu-check         # data collection report, no torch

Steps (all timed and written into the model card):
  1. Sources: every *.py (with --with-stubs also *.pyi, never typeshed's standard-library
     stubs) under the site-/dist-packages directories of this Python (site and
     sysconfig purelib/platlib, sys.path entries), sorted by (root, path). Left out: anything
     under the standard library's directories (sysconfig stdlib/platstdlib) that is not in a
     site-/dist-packages directory, any path with a /python3.X/ component that is not followed
     by site-/dist-packages, backports and vendored copies of standard modules (by name:
     STDLIB_COPIES, and by content: files sharing more than --stdlib-overlap of their long lines
     with the standard library of this Python or of --stdlib-like directories), exact duplicates,
     files over --max-file-kb, minified or table-like files (very long lines), nearly empty
     files. Reported: files, bytes and tokens kept, and what was left out and why.
  2. Split: by directory. A directory's files (one package level: torch/nn/modules/, ...) form a
     *group*; a hash of its path puts --heldout-permille of the groups into the held-out set, so
     every held-out file and its sibling modules are unseen in training.
  3. Tokenizer: byte-level BPE (--vocab-size) trained with `tokenizers` on a sample of the
     training groups: the Llama-3 Split regex + ByteLevel pre-tokenizer, ByteLevel decoder, no
     normalizer, no byte fallback: the tokenizer.json layout Squeeze's loader implements
     (engine/tokenizer/bpe_tokenizer.cc; checked by squeeze_tokenizer_problems() before use).
     Special tokens <|bos|> (0) and <|eos|> (1), named in tokenizer_config.json.
  4. Rows: a group is the text its files make in a codebase context (codebase_tasks.file_block:
     "# file: <path>" then the file, files of a directory in path order, one blank line apart),
     tokenized as [BOS] + Encode(text). Groups are concatenated in a seeded order into one
     training stream and one held-out stream (uint16, cached in --data-dir); a training row is a
     window at a random offset, so a 16K row holds neighbouring modules of one package and the
     long context carries information (imports, names and signatures defined earlier).
  5. Model: Hugging Face LlamaForCausalLM (GQA, tied embeddings, RoPE theta --rope-theta),
     <= 25M parameters (asserted; the default shape has 7.6M, so that the bf16 weights stay
     under 16 MB: every clone of the repository and every GPU-machine call carries them),
     fp32 master weights, bf16 autocast, SDPA (flash) attention,
     fused AdamW, warmup + cosine over the training window. The row length follows a curriculum
     (--curriculum, over the training time) up to --max-len = 16384 = max_position_embeddings.
  6. Eval on held-out 16K rows: mean loss, loss by position, and the loss of the rows' last
     --tail tokens given windows of 2K, 4K, 8K and 16K tokens (the value of long context);
     measured again on the saved bf16 model reloaded from disk.
  7. Save: save_pretrained (safetensors, bf16), tokenizer.json, tokenizer_config.json,
     generation_config.json, README.md (model card filled in from the run), training_log.json
     (loss curve, eval history, data report).

Time: --time-budget-min bounds the whole command (default 9.6: one 10-minute GPU command);
training stops at --train-min (at most 9) after it starts or --final-reserve-s before the budget
ends, whichever is first; then the final eval and the save. Preparing the data takes a few
minutes: run --prepare-only first (its own command), and the training command finds the cached
stream in --data-dir (keyed by the data options; delete the directory to rebuild).

Only torch, transformers, tokenizers, numpy and the standard library are used; torch and the
others are imported where needed, so the data collection runs anywhere (--cpu-check).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import math
import multiprocessing as mp
import os
import platform
import random
import re
import shutil
import site
import sys
import sysconfig
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import codebase_tasks as cb  # noqa: E402  (the context layout shared with the benchmark)
from make_goldens import LLAMA3_PATTERN  # noqa: E402  (the engine's Split regex)

BOS, EOS = "<|bos|>", "<|eos|>"
BOS_ID, EOS_ID = 0, 1
MAX_PARAMS = 25_000_000
MAX_TRAIN_MIN = 9.0  # the limit on one run's training time

# Backports and vendored copies of standard-library modules, by path: these names anywhere in
# a path; and a top-level module or package (or one right under a vendoring directory) named
# like a standard module (sys.stdlib_module_names and the standard library's own entries:
# enum34 installs enum/, futures concurrent/, typing a typing.py, ...).
STDLIB_COPIES = frozenset("""
    backports _distutils _distutils_hack importlib_metadata importlib_resources zipp
    typing_extensions tomli exceptiongroup singledispatch contextlib2 pathlib2 enum34 funcsigs
    selectors34 subprocess32 trollius chainmap mock
""".split())
VENDOR_DIRS = frozenset(("_vendor", "vendor", "vendored", "_vendored", "extern", "_extern"))

# (end of phase as a fraction of the training window, row length); lengths above --max-len are
# clipped. Short rows first are cheaper per token (attention grows with the length), then most
# of the run at 16K so that attention learns to use far context.
DEFAULT_CURRICULUM = "0.25:2048,0.5:8192,1:16384"


# ----------------------------------------------------------------------------------------------
# 1. Sources (standard library only: runs without torch).

def package_roots() -> list[str]:
    """The site-/dist-packages directories of this Python that exist, as real paths, sorted."""
    cands = []
    try:
        cands += site.getsitepackages()
    except AttributeError:  # old virtualenv's site.py
        pass
    try:
        cands.append(site.getusersitepackages())
    except AttributeError:
        pass
    paths = sysconfig.get_paths()
    cands += [paths.get("purelib"), paths.get("platlib")]
    cands += [p for p in sys.path if os.path.basename(p.rstrip("/")) in
              ("site-packages", "dist-packages")]
    out = []
    for p in cands:
        if p and os.path.isdir(p):
            r = os.path.realpath(p)
            if r not in out:
                out.append(r)
    return sorted(out)


def stdlib_dirs(extra: list[str]) -> list[str]:
    paths = sysconfig.get_paths()
    out = []
    for p in [paths.get("stdlib"), paths.get("platstdlib")] + list(extra):
        if p and os.path.isdir(p) and os.path.realpath(p) not in out:
            out.append(os.path.realpath(p))
    return out


_PY_VERSION_DIR = re.compile(r"/python3\.\d+/")
_PACKAGES = ("site-packages/", "dist-packages/")


def is_stdlib_path(path: str, stdlibs: list[str]) -> bool:
    """Whether a (real) path belongs to a standard library: under one of `stdlibs`, or under a
    /python3.X/ directory, and not inside a site-/dist-packages directory there."""
    path = path.replace(os.sep, "/")
    for d in stdlibs:
        d = d.replace(os.sep, "/").rstrip("/") + "/"
        if path.startswith(d) and not path[len(d):].startswith(_PACKAGES):
            return True
    m = None
    for m in _PY_VERSION_DIR.finditer(path):
        pass
    return m is not None and not path[m.end():].startswith(_PACKAGES)


def stdlib_top_names(stdlibs: list[str]) -> frozenset:
    names = set(getattr(sys, "stdlib_module_names", ()))
    for d in stdlibs:
        for entry in os.listdir(d):
            if entry.endswith(".py"):
                names.add(entry[:-3])
            elif os.path.isdir(os.path.join(d, entry)) and entry not in (
                    "site-packages", "dist-packages", "__pycache__"):
                names.add(entry)
    return frozenset(names)


# Stubs of the standard library (typeshed, vendored by mypy, jedi, pyright, ...) hold its
# signatures: never training data (the codebase benchmark asks for exactly those).
STDLIB_STUB_DIRS = frozenset(("typeshed", "stdlib", "stdlib-stubs"))


def is_stdlib_copy(relpath: str, stdlib_names: frozenset) -> bool:
    parts = relpath.split("/")
    parts[-1] = parts[-1].removesuffix(".pyi").removesuffix(".py")
    if parts[0] in stdlib_names or any(p in STDLIB_STUB_DIRS for p in parts[:-1]):
        return True
    return any(p in STDLIB_COPIES or (i and parts[i - 1] in VENDOR_DIRS and p in stdlib_names)
               for i, p in enumerate(parts))


def list_py_files(roots: list[str], stdlibs: list[str],
                  with_stubs: bool = False) -> tuple[list, collections.Counter]:
    """-> ([(root, relpath)] sorted, {reason: count} for paths left out by name). With
    `with_stubs`, the *.pyi stubs too (a module's stub sorts right after it)."""
    suffixes = (".py", ".pyi") if with_stubs else (".py",)
    skipped = collections.Counter()
    files = []
    root_set = set(roots)
    stdlib_names = stdlib_top_names(stdlibs)
    for root in roots:
        for dirpath, dirs, entries in os.walk(root):
            keep = []
            for d in sorted(dirs):
                full = os.path.join(dirpath, d)
                # Another root nested here is walked on its own; caches and hidden dirs never.
                if d == "__pycache__" or d.startswith(".") or os.path.realpath(full) in root_set:
                    continue
                keep.append(d)
            dirs[:] = keep
            for name in sorted(entries):
                if not name.endswith(suffixes):
                    continue
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, root).replace(os.sep, "/")
                if is_stdlib_path(os.path.realpath(full), stdlibs):
                    skipped["standard library path"] += 1
                elif is_stdlib_copy(rel, stdlib_names):
                    skipped["standard module backport or copy (by name)"] += 1
                else:
                    files.append((root, rel))
    files.sort()
    return files, skipped


def _long_lines(text: str, min_len: int = 24) -> list[str]:
    return [s for s in (l.strip() for l in text.split("\n")) if len(s) >= min_len]


_STDLIB_LINES: frozenset = frozenset()  # hashes of the standard library's long lines (forked)


def stdlib_line_hashes(stdlibs: list[str]) -> frozenset:
    out = set()
    for d in stdlibs:
        for dirpath, dirs, names in os.walk(d):
            dirs[:] = [x for x in dirs if x not in ("site-packages", "dist-packages",
                                                     "__pycache__")]
            for name in names:
                if name.endswith(".py"):
                    try:
                        with open(os.path.join(dirpath, name), encoding="utf-8") as f:
                            out.update(hash(l) for l in _long_lines(f.read()))
                    except (OSError, UnicodeDecodeError):
                        pass
    return frozenset(out)


def _inspect_file(job: tuple) -> tuple:
    """-> (reason or "", bytes, sha1 of the content). Runs in pool workers."""
    path, max_bytes, overlap_limit = job
    try:
        size = os.path.getsize(path)
        if size > max_bytes:
            return "larger than --max-file-kb", size, ""
        with open(path, "rb") as f:
            raw = f.read()
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "not UTF-8", 0, ""
    except OSError:
        return "unreadable", 0, ""
    if len("".join(text.split())) < 64:
        return "nearly empty", len(raw), ""
    lines = text.split("\n")
    if max(len(l) for l in lines) > 2000 or len(text) / len(lines) > 120:
        return "minified or table-like (long lines)", len(raw), ""
    longs = _long_lines(text)
    if _STDLIB_LINES and len(longs) >= 8:
        shared = sum(hash(l) in _STDLIB_LINES for l in longs)
        if shared > overlap_limit * len(longs):
            return "standard library copy (by content)", len(raw), ""
    return "", len(raw), hashlib.sha1(raw).hexdigest()


def group_key(relpath: str) -> str:
    """A file's group: its directory (one package level), "." for a root's top-level modules."""
    return relpath.rsplit("/", 1)[0] if "/" in relpath else "."


def is_heldout(group: str, permille: int) -> bool:
    """Stable across machines and roots: a hash of the directory path relative to its root."""
    return int(hashlib.sha1(f"heldout:{group}".encode()).hexdigest()[:8], 16) % 1000 < permille


def collect_corpus(args) -> dict:
    """Lists, inspects and splits the sources. -> {"groups": [{"root", "dir", "files": [rel],
    "bytes", "heldout"}] in a seeded order, "report": {...}}. No file text is kept in memory."""
    global _STDLIB_LINES
    t0 = time.time()
    roots = [os.path.realpath(r) for r in args.roots] if args.roots else package_roots()
    stdlibs = stdlib_dirs(args.stdlib_like)
    roots = [r for r in roots if not is_stdlib_path(r + "/x.py", stdlibs)]
    if not roots:
        raise SystemExit("error: no site-packages or dist-packages directory found")
    files, skipped = list_py_files(roots, stdlibs, args.with_stubs)
    skipped_bytes = collections.Counter()

    # Whole groups, in a seeded order; --max-corpus-mb keeps a prefix of them (sizes on disk).
    by_group = collections.OrderedDict()
    for root, rel in files:
        by_group.setdefault((root, group_key(rel)), []).append(rel)
    order = sorted(by_group)
    random.Random(f"code:{args.seed}:groups").shuffle(order)
    if args.max_corpus_mb:
        picked, total = [], 0
        for key in order:
            if total >= args.max_corpus_mb * 2**20:
                break
            picked.append(key)
            total += sum(os.path.getsize(os.path.join(key[0], r)) for r in by_group[key])
        beyond = sum(len(by_group[k]) for k in order[len(picked):])
        if beyond:
            skipped["beyond --max-corpus-mb"] += beyond
        order = picked
    listed = [(k[0], r) for k in sorted(order) for r in by_group[k]]

    _STDLIB_LINES = stdlib_line_hashes(stdlibs)  # before the pool forks: workers share it
    jobs = [(os.path.join(r, rel), args.max_file_kb * 1024, args.stdlib_overlap)
            for r, rel in listed]
    with mp.get_context("fork").Pool(args.workers) as pool:
        results = pool.map(_inspect_file, jobs, chunksize=64)
    _STDLIB_LINES = frozenset()
    ok, seen = {}, set()
    for (root, rel), (reason, size, sha) in zip(listed, results):  # sorted: first copy wins
        if not reason and sha in seen:
            reason = "duplicate content"
        if reason:
            skipped[reason] += 1
            skipped_bytes[reason] += size
            continue
        seen.add(sha)
        ok[(root, rel)] = size

    groups, packages = [], collections.Counter()
    for key in order:
        root, gdir = key
        rels = [r for r in by_group[key] if (root, r) in ok]
        if not rels:
            continue
        size = sum(ok[(root, r)] for r in rels)
        groups.append({"root": root, "dir": gdir, "files": rels, "bytes": size,
                       "heldout": is_heldout(gdir, args.heldout_permille)})
        packages[rels[0].split("/")[0].removesuffix(".py")] += size
    n_files = sum(len(g["files"]) for g in groups)
    n_bytes = sum(g["bytes"] for g in groups)
    held = [g for g in groups if g["heldout"]]
    report = {
        "roots": roots, "stdlib_dirs": stdlibs, "files": n_files, "bytes": n_bytes,
        "groups": len(groups), "heldout_groups": len(held),
        "heldout_files": sum(len(g["files"]) for g in held),
        "heldout_bytes": sum(g["bytes"] for g in held),
        "left_out": {k: {"files": v, "bytes": skipped_bytes.get(k, 0)}
                     for k, v in sorted(skipped.items(), key=lambda x: -x[1])},
        "top_packages_mb": {k: round(v / 2**20, 1) for k, v in packages.most_common(20)},
        "packages": len(packages), "seconds": round(time.time() - t0, 1),
    }
    return {"groups": groups, "report": report}


def group_text(g: dict) -> str:
    """The group's files as a codebase context lays them out (shared with the benchmark)."""
    blocks = []
    for rel in g["files"]:
        with open(os.path.join(g["root"], rel), encoding="utf-8") as f:
            blocks.append(cb.file_block(rel, f.read()))
    return cb.BLOCK_SEP.join(blocks)


def format_report(r: dict) -> str:
    lines = [f"roots: {', '.join(r['roots'])}",
             f"standard library (excluded): {', '.join(r['stdlib_dirs'])}",
             f"kept: {r['files']} files, {r['bytes'] / 2**20:.1f} MiB in {r['groups']} "
             f"directories of {r['packages']} packages; held out: {r['heldout_files']} files, "
             f"{r['heldout_bytes'] / 2**20:.1f} MiB in {r['heldout_groups']} directories"]
    if "tokens" in r:
        lines.append(f"tokens: {r['tokens']:,} ({r['train_tokens']:,} training, "
                     f"{r['heldout_tokens']:,} held out; {r['bytes_per_token']:.2f} bytes/token)")
    lines.append("left out: " + "; ".join(f"{k}: {v['files']} files"
                                          + (f" ({v['bytes'] / 2**20:.1f} MiB)" if v['bytes']
                                             else "")
                                          for k, v in r["left_out"].items()))
    lines.append("largest packages (MiB): " + ", ".join(f"{k} {v}" for k, v in
                                                       r["top_packages_mb"].items()))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# 2. Tokenizer and token streams (tokenizers, numpy).

def squeeze_tokenizer_problems(data: dict) -> list[str]:
    """What Squeeze's tokenizer.json loader (engine/tokenizer/bpe_tokenizer.cc) would refuse in
    `data`; empty when it loads. Mirrors the loader's checks."""
    bad = []
    if data.get("normalizer") is not None:
        bad.append("normalizer must be null")
    pre = data.get("pre_tokenizer") or {}
    pts = pre.get("pretokenizers") or []
    if pre.get("type") != "Sequence" or len(pts) != 2:
        bad.append("pre_tokenizer must be Sequence[Split, ByteLevel]")
    else:
        split, bl = pts
        if split.get("type") != "Split" or (split.get("pattern") or {}).get("Regex") != \
                LLAMA3_PATTERN or split.get("behavior") != "Isolated" or split.get("invert"):
            bad.append("pre_tokenizer[0] must be Split(Llama-3 regex, Isolated, invert=false)")
        if bl.get("type") != "ByteLevel" or bl.get("add_prefix_space") or \
                bl.get("use_regex") is not False:
            bad.append("pre_tokenizer[1] must be ByteLevel(add_prefix_space=false, "
                       "use_regex=false)")
    if (data.get("decoder") or {}).get("type") != "ByteLevel":
        bad.append("decoder must be ByteLevel")
    model = data.get("model") or {}
    if model.get("type", "BPE") != "BPE":
        bad.append("model must be BPE")
    for key in ("continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key) not in (None, ""):
            bad.append(f"model.{key} must be null")
    if model.get("byte_fallback"):
        bad.append("model.byte_fallback must be false")
    if model.get("dropout") not in (None, 0, 0.0):
        bad.append("model.dropout must be null")
    vocab = model.get("vocab") or {}
    added = data.get("added_tokens") or []
    for t in added:
        if any(t.get(k) for k in ("single_word", "lstrip", "rstrip")):
            bad.append(f"added token {t.get('content')!r}: single_word/lstrip/rstrip must be false")
    ids = list(vocab.values()) + [t.get("id", -1) for t in added]
    if not vocab or max(ids) >= 2 * (len(vocab) + len(added)) + 1024:
        bad.append("vocab ids must be nearly dense")
    for m in model.get("merges") or []:
        parts = m.split(" ") if isinstance(m, str) else m
        if len(parts) != 2 or "".join(parts) not in vocab:
            bad.append(f"merge {m!r} is malformed or makes a token not in the vocab")
            break
    return bad


def train_tokenizer(corpus: dict, args, out_path: str):
    """Byte-level BPE on a seeded sample of the training groups (--tok-sample-mb); writes
    tokenizer.json and returns the `tokenizers` Tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from tokenizers import trainers

    sample, total = [], 0
    for g in corpus["groups"]:  # already in a seeded order
        if not g["heldout"] and total < args.tok_sample_mb * 2**20:
            sample.append(g)
            total += g["bytes"]

    def texts():
        for g in sample:
            for rel in g["files"]:
                with open(os.path.join(g["root"], rel), encoding="utf-8") as f:
                    yield cb.file_block(rel, f.read())

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=args.vocab_size, min_frequency=2,
                                  show_progress=False, special_tokens=[BOS, EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts(), trainer=trainer,
                            length=sum(len(g["files"]) for g in sample))
    if (tok.token_to_id(BOS), tok.token_to_id(EOS)) != (BOS_ID, EOS_ID):
        raise RuntimeError(f"special ids are {tok.token_to_id(BOS)}/{tok.token_to_id(EOS)}")
    # transformers' tokenizer then adds BOS like Squeeze does when it registers a context.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, BOS_ID)])
    tok.save(out_path)
    with open(out_path, encoding="utf-8") as f:
        problems = squeeze_tokenizer_problems(json.load(f))
    if problems:
        raise RuntimeError("the trained tokenizer.json would not load in Squeeze: "
                           + "; ".join(problems))
    return Tokenizer.from_file(out_path), {"sample_files": sum(len(g["files"]) for g in sample),
                                           "sample_bytes": total}


def encode_streams(tok, corpus: dict, data_dir: str, args) -> dict:
    """Tokenizes every group as [BOS] + Encode(group_text) into train.u16 / heldout.u16 (group
    order: the corpus's seeded order). -> token counts."""
    import numpy as np

    if tok.get_vocab_size(with_added_tokens=True) > 65536:
        raise RuntimeError("token ids must fit uint16: use --vocab-size <= 65536")
    encode = getattr(tok, "encode_batch_fast", None) or tok.encode_batch
    counts = {"train": 0, "heldout": 0}
    outs = {k: open(os.path.join(data_dir, f"{k}.u16"), "wb") for k in counts}
    try:
        batch, size = [], 0

        def flush():
            encs = encode([group_text(g) for g in batch], add_special_tokens=False)
            for g, e in zip(batch, encs):
                k = "heldout" if g["heldout"] else "train"
                ids = np.asarray(e.ids, dtype=np.uint16)
                outs[k].write(np.asarray([BOS_ID], dtype=np.uint16).tobytes())
                outs[k].write(ids.tobytes())
                counts[k] += 1 + len(ids)
                g["tokens"] = 1 + len(ids)

        for g in corpus["groups"]:
            batch.append(g)
            size += g["bytes"]
            if size >= 32 * 2**20:
                flush()
                batch, size = [], 0
        if batch:
            flush()
    finally:
        for f in outs.values():
            f.close()
    return counts


def data_key(args) -> dict:
    return {"format": 1, "roots": args.roots, "stdlib_like": args.stdlib_like,
            "seed": args.seed, "vocab_size": args.vocab_size, "tok_sample_mb": args.tok_sample_mb,
            "heldout_permille": args.heldout_permille, "max_file_kb": args.max_file_kb,
            "stdlib_overlap": args.stdlib_overlap, "max_corpus_mb": args.max_corpus_mb,
            "python": sys.executable, "with_stubs": args.with_stubs}


def prepare_data(args) -> dict:
    """Builds (or finds) --data-dir: tokenizer.json, train.u16, heldout.u16, data.json."""
    meta_path = os.path.join(args.data_dir, "data.json")
    key = data_key(args)
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        if meta.get("key") == key:
            print(f"[data] using the cached data in {args.data_dir} (prepared in "
                  f"{meta['report']['prepare_s']:.0f} s)", flush=True)
            return meta
        print(f"[data] {args.data_dir} was prepared with other options; rebuilding", flush=True)
    t0 = time.time()
    corpus = collect_corpus(args)
    r = corpus["report"]
    print(f"[data] sources listed and inspected in {r['seconds']:.0f} s\n"
          + format_report(r), flush=True)
    tmp = args.data_dir.rstrip("/") + f".tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    t1 = time.time()
    tok, tok_info = train_tokenizer(corpus, args, os.path.join(tmp, "tokenizer.json"))
    tok_s = time.time() - t1
    print(f"[tokenizer] byte-level BPE, {tok.get_vocab_size(with_added_tokens=True)} tokens, "
          f"trained on {tok_info['sample_files']} files ({tok_info['sample_bytes'] / 2**20:.0f} "
          f"MiB) in {tok_s:.0f} s", flush=True)
    t2 = time.time()
    counts = encode_streams(tok, corpus, tmp, args)
    r.update(tokens=counts["train"] + counts["heldout"], train_tokens=counts["train"],
             heldout_tokens=counts["heldout"],
             bytes_per_token=r["bytes"] / max(1, counts["train"] + counts["heldout"]),
             tokenizer_s=round(tok_s, 1), encode_s=round(time.time() - t2, 1),
             prepare_s=round(time.time() - t0, 1), vocab=tok.get_vocab_size(True), **tok_info)
    print(f"[data] tokenized in {r['encode_s']:.0f} s: {counts['train']:,} training and "
          f"{counts['heldout']:,} held-out tokens ({r['bytes_per_token']:.2f} bytes/token)",
          flush=True)
    meta = {"key": key, "report": r,
            "heldout_dirs": [g["dir"] for g in corpus["groups"] if g["heldout"]][:2000]}
    with open(os.path.join(tmp, "data.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    shutil.rmtree(args.data_dir, ignore_errors=True)
    os.replace(tmp, args.data_dir)
    return meta


def cpu_check(args) -> int:
    """Data collection report (and, where `tokenizers` is installed, a small tokenizer with the
    Squeeze layout checks); no torch, writes nothing but a temporary directory."""
    corpus = collect_corpus(args)
    print(format_report(corpus["report"]))
    import importlib.util
    import tempfile
    if importlib.util.find_spec("tokenizers") is None:
        print("tokenizers is not installed: tokenizer not checked")
        return 0
    work = tempfile.mkdtemp(prefix="squeeze-code-check-")
    try:
        small = argparse.Namespace(**{**vars(args), "tok_sample_mb": min(4, args.tok_sample_mb),
                                      "vocab_size": min(2048, args.vocab_size)})
        tok, info = train_tokenizer(corpus, small, os.path.join(work, "tokenizer.json"))
        g = next(g for g in corpus["groups"] if g["heldout"]) if any(
            g["heldout"] for g in corpus["groups"]) else corpus["groups"][0]
        text = group_text(g)[:20000]
        ids = tok.encode(text, add_special_tokens=False).ids
        ok = tok.decode(ids, skip_special_tokens=False) == text
        print(f"tokenizer: {tok.get_vocab_size(True)} tokens from {info['sample_files']} files; "
              f"Squeeze layout ok; round trip on {len(text)} characters of {g['dir']}: "
              f"{'ok' if ok else 'DIFFERENT'} ({len(text) / max(1, len(ids)):.2f} chars/token)")
        return 0 if ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# 3. Model, training and evaluation (torch, transformers).

def count_params(args, vocab: int) -> int:
    """LlamaForCausalLM's parameter count with tied embeddings (checked against the model)."""
    h, q, kv = args.hidden, args.heads * args.head_dim, args.kv_heads * args.head_dim
    layer = 2 * h * q + 2 * h * kv + 3 * h * args.intermediate + 2 * h
    return vocab * h + args.layers * layer + h


def parse_curriculum(spec: str, max_len: int) -> list[tuple[float, int]]:
    phases = []
    for item in spec.split(","):
        end, length = item.split(":")
        phases.append((float(end), min(int(length), max_len)))
    if not phases or phases[-1][0] < 1.0 or any(a[0] >= b[0] for a, b in zip(phases, phases[1:])):
        raise ValueError(f"--curriculum {spec!r}: phases 'END:LENGTH' with increasing ends, the "
                         f"last one 1")
    return phases


def row_length(phases, progress: float) -> int:
    for end, length in phases:
        if progress < end:
            return length
    return phases[-1][1]


def heldout_eval(model, rows, tail: int, tokens_per_forward: int, autocast: bool = True) -> dict:
    """rows: [R, T] held-out token rows. -> mean next-token loss over all positions, by
    position, and the loss of the last `tail` tokens given windows of tail+1 .. T tokens (each
    window ends with the scored tokens; the smallest sees only them, the largest the whole row).
    """
    import torch
    import torch.nn.functional as F

    was_training = model.training
    model.eval()
    R, T = rows.shape
    edges = [e for e in (0, 512, 2048, 8192, T) if e <= T]
    windows = sorted({w for w in (tail + 1, 4096, 8192, T) if tail < w <= T})
    out = {"rows": R, "row_tokens": T, "tail": tail, "windows": {}}
    with torch.no_grad():
        for w in windows:
            per_pos = torch.zeros(w - 1, dtype=torch.float64, device=rows.device)
            n = max(1, tokens_per_forward // w)
            for i in range(0, R, n):
                x = rows[i:i + n, T - w:].long()
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                    logits = model(input_ids=x, use_cache=False).logits
                ce = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                     x[:, 1:].reshape(-1), reduction="none")
                per_pos += ce.view(x.shape[0], w - 1).double().sum(0)
                del logits, ce
            per_pos /= R
            out["windows"][str(w)] = per_pos[-tail:].mean().item()
            if w == T:  # position p predicts token p+1
                out["loss"] = per_pos.mean().item()
                out["by_position"] = {f"{a}-{b}": per_pos[max(0, a - 1):b - 1].mean().item()
                                      for a, b in zip(edges, edges[1:])}
    model.train(was_training)
    return out


def format_eval(e: dict) -> str:
    def k(n):
        return f"{n / 1024:.0f}K" if n >= 1024 else str(n)
    rows = [f"| window (tokens) | loss of the last {k(e['tail'])} tokens |", "|---|---|"]
    for w, v in e["windows"].items():
        rows.append(f"| {k(int(w))} | {v:.4f} |")
    pos = ", ".join(f"{a} {v:.3f}" for a, v in e["by_position"].items())
    return (f"held-out loss {e['loss']:.4f} over {e['rows']} rows of {e['row_tokens']} tokens; "
            f"by position: {pos}\n" + "\n".join(rows))


def build_model(args, vocab: int, device):
    """train_demo_model's Llama builder (RoPE and tying checked there), with this tokenizer's
    special ids."""
    import train_demo_model as demo
    model, n_params = demo.build_model(args, vocab, device)
    for cfg in (model.config, model.generation_config):
        cfg.bos_token_id, cfg.eos_token_id = BOS_ID, EOS_ID
    model.generation_config.pad_token_id = EOS_ID
    return model, n_params


def save_model(model, out_dir: str, data_dir: str, args) -> None:
    import torch
    os.makedirs(out_dir, exist_ok=True)
    model.to(torch.bfloat16)
    model.save_pretrained(out_dir)
    st = sorted(f for f in os.listdir(out_dir) if f.endswith(".safetensors"))
    if st != ["model.safetensors"]:
        raise RuntimeError(f"expected one model.safetensors in {out_dir}, found {st}")
    shutil.copyfile(os.path.join(data_dir, "tokenizer.json"),
                    os.path.join(out_dir, "tokenizer.json"))
    tok_cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": BOS, "eos_token": EOS,
               "pad_token": None, "add_bos_token": True, "add_eos_token": False,
               "model_max_length": args.max_len, "clean_up_tokenization_spaces": False}
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(tok_cfg, f, indent=2)
        f.write("\n")
    if not os.path.exists(os.path.join(out_dir, "generation_config.json")):
        model.generation_config.save_pretrained(out_dir)


def hf_tokenizer_check(out_dir: str, tok, texts: list[str]) -> str:
    """Whether transformers' tokenizer for the directory gives the same ids (informative; the
    Squeeze engine reads tokenizer.json itself)."""
    try:
        from transformers import AutoTokenizer
        hf = AutoTokenizer.from_pretrained(out_dir)
        bad = [t for t in texts
               if hf.encode(t, add_special_tokens=False) != tok.encode(t, add_special_tokens=False).ids]
        with_bos = hf.encode("x = 1")[:1] == [BOS_ID]
        return (f"{type(hf).__name__}: {'identical ids' if not bad else f'DIFFERENT ids on {len(bad)}'}"
                f" on {len(texts)} texts; BOS added by default: {with_bos}")
    except Exception as e:  # noqa: BLE001 - informative only
        return f"not checked ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})"


MODEL_CARD = """# squeeze-code

A {params_m:.1f}M-parameter Llama-architecture model trained from scratch by
`tools/train_code_model.py` on Python source code, with a 16K-token context. It is the model of
Squeeze's codebase benchmark (`tools/codebase_tasks.py`), whose contexts come from the CPython
standard library: no standard-library file is in its training data.

## Use
Register code as a context (tokenized as `[BOS] + text`; files laid out as
`# file: <path>` then the file, one blank line apart, as in training), then continue it; the
model completes code. It is small and trained for minutes: expect plausible-looking Python that
copies names and signatures from its context, not working programs.

## Held-out loss (unseen directories; the saved bf16 model reloaded from disk)
{heldout}

The table is the value of long context: the same last tokens of each held-out row, scored with
only themselves in view (smallest window) up to the whole 16K row before them.

Training loss (mean of the last {last_n} logged steps, at the final row length): {final_loss:.4f}.
Loss curve and eval history: `training_log.json`.

## Data
The {sources} files of the installed packages of the training machine's Python: {data_report}

Never included: any file of the standard library (sysconfig's stdlib/platstdlib directories and
any /python3.X/ directory outside site-/dist-packages), backports and vendored copies of standard
modules (by path component, and files sharing more than {overlap:.0%} of their long lines with
the standard library), duplicates, files over {max_file_kb} KiB, minified or table-like files.
Held out: {heldout_pct:g}% of the directories by a hash of their path, so held-out files and their sibling
modules are all unseen.

## Architecture
`LlamaForCausalLM`: hidden {hidden}, {layers} layers, {heads} query heads, {kv_heads} KV heads
(GQA), head_dim {head_dim}, SwiGLU intermediate {intermediate}, RoPE theta {rope_theta:g},
max_position_embeddings {max_len}, tied embeddings, vocab {vocab}; {params} parameters,
{size_mib:.1f} MiB as bf16 safetensors.

Tokenizer (`tokenizer.json`): byte-level BPE trained with `tokenizers` {tok_v} on
{tok_files} training files ({tok_mib:.0f} MiB): Llama-3 Split regex + ByteLevel pre-tokenizer,
ByteLevel decoder, no normalizer; `<|bos|>` = 0, `<|eos|>` = 1. {bytes_per_token:.2f} bytes per
token on the training data. transformers tokenizer check: {hf_tok}.

## Training
- Rows: each directory's files concatenated as `[BOS]` + its codebase-context text, directories
  in a seeded order; a row is a window at a random offset of this stream.
- Row length curriculum over the training time: {curriculum}.
- {tokens_per_step} tokens per step, AdamW (fused={fused}), lr {lr:g} peak, {warmup} warmup
  steps, cosine to {min_lr_frac} x peak, weight decay {wd} on matrices, grad clip {clip}; bf16
  autocast, fp32 master weights, SDPA attention ({sdpa}).
- {steps} steps, {tokens_m:.0f}M tokens ({epochs:.2f} passes over the training tokens) in
  {train_s:.0f} s of training (limit {train_limit_s:.0f} s).

Command: `{command}`

Wall time {wall_s:.0f} s in all (data and tokenizer {data_s:.0f} s{data_note}, setup
{setup_s:.0f} s, training {train_s:.0f} s, final eval and save {final_s:.0f} s) on {gpu}; torch
{torch_v}, transformers {tf_v}, tokenizers {tok_v}, Python {py_v}.
"""


def train(args, meta: dict, t0: float, command: str) -> int:
    import numpy as np
    import tokenizers
    import torch
    import transformers
    from tokenizers import Tokenizer

    import train_demo_model as demo

    if not torch.cuda.is_available():
        print("error: no CUDA device", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    torch.manual_seed(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.enable_cudnn_sdp(False)  # per-shape plans; flash has no such cost
    gpu = torch.cuda.get_device_name(0)
    data_s = time.time() - t0
    report = meta["report"]
    vocab = report["vocab"]
    tok = Tokenizer.from_file(os.path.join(args.data_dir, "tokenizer.json"))

    # Streams on the GPU as int32 (a few GB at most): batches are gathered there, no loader.
    train_np = np.fromfile(os.path.join(args.data_dir, "train.u16"), dtype=np.uint16)
    held_np = np.fromfile(os.path.join(args.data_dir, "heldout.u16"), dtype=np.uint16)
    T = args.max_len
    if len(held_np) < T + 1 or len(train_np) < 4 * T:
        print(f"error: too little data ({len(train_np)} training, {len(held_np)} held-out "
              f"tokens) for {T}-token rows", file=sys.stderr)
        return 2
    stream = torch.from_numpy(train_np.astype(np.int32)).to(device)
    n_rows = min(args.eval_rows, len(held_np) // T)
    starts = [i * (len(held_np) - T) // max(1, n_rows - 1) for i in range(n_rows)]
    rows = torch.from_numpy(np.stack([held_np[s:s + T] for s in starts]).astype(np.int32))
    rows = rows.to(device)
    quick = rows[:args.eval_quick_rows]
    print(f"[setup] {gpu}; torch {torch.__version__}, transformers {transformers.__version__}, "
          f"tokenizers {tokenizers.__version__}; {len(train_np):,} training tokens, {n_rows} "
          f"held-out rows of {T}", flush=True)

    model, n_params = build_model(args, vocab, device)
    if n_params > MAX_PARAMS and not args.smoke:
        print(f"error: {n_params:,} parameters, more than {MAX_PARAMS:,}", file=sys.stderr)
        return 2
    if n_params != count_params(args, vocab):
        print(f"[model] note: {n_params:,} parameters, count_params says "
              f"{count_params(args, vocab):,}", flush=True)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": args.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    try:
        opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=True)
        fused = True
    except (RuntimeError, TypeError):
        opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
        fused = False
    sdpa = demo.sdpa_probe(model, vocab, device)
    print(f"[model] SDPA kernel for causal training batches: {sdpa}", flush=True)

    phases = parse_curriculum(args.curriculum, T)
    ar = torch.arange(T, device=device)
    gen = torch.Generator(device=device)
    gen.manual_seed(args.seed)

    def batch(length: int):
        b = max(1, args.tokens_per_step // length)
        off = torch.randint(0, len(train_np) - length, (b,), device=device, generator=gen)
        return stream[off[:, None] + ar[None, :length]].long()

    # Memory probe at the longest row: fails fast instead of after minutes.
    torch.cuda.synchronize()
    tp = time.time()
    demo.token_ce(model, batch(T), vocab).mean().backward()
    torch.cuda.synchronize()
    model.zero_grad(set_to_none=True)
    print(f"[probe] {args.tokens_per_step // T} x {T} tokens fwd+bwd in {time.time() - tp:.2f} s"
          f", peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB", flush=True)

    train_start = time.time()
    setup_s = train_start - t0 - data_s
    deadline = t0 + 60 * args.time_budget_min - args.final_reserve_s
    train_end = min(deadline, train_start + 60 * args.train_min)
    span = max(1.0, train_end - train_start)
    print(f"[train] training window {span:.0f} s (limit {60 * args.train_min:.0f} s; "
          f"{args.final_reserve_s:.0f} s kept for the final eval and save)", flush=True)
    log_rows, history = [], []
    acc = {"loss": torch.zeros((), device=device), "n": 0, "tokens": 0, "t": time.time()}
    last_losses = collections.deque(maxlen=5)
    step, tokens_total, length = 0, 0, phases[0][1]
    while time.time() < train_end:
        p = (time.time() - train_start) / span
        length = row_length(phases, p)
        lr = args.lr * min(1.0, (step + 1) / args.warmup_steps)
        lr *= args.min_lr_frac + (1 - args.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * p))
        for g in opt.param_groups:
            g["lr"] = lr
        ids = batch(length)
        loss = demo.token_ce(model, ids, vocab).mean()
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        acc["loss"] += loss.detach()
        acc["n"] += 1
        acc["tokens"] += ids.numel()
        tokens_total += ids.numel()
        step += 1
        if step % args.log_every == 0:
            l = acc["loss"].item() / acc["n"]
            if not math.isfinite(l):
                print(f"[train] step {step}: loss is not finite; stopping without saving. Try a "
                      f"lower --lr.", flush=True)
                return 1
            dt = time.time() - acc["t"]
            row = {"step": step, "t": round(time.time() - t0, 1), "progress": round(p, 4),
                   "lr": lr, "loss": l, "len": length, "rows": ids.shape[0],
                   "grad_norm": float(gnorm), "tok_per_s": acc["tokens"] / dt}
            log_rows.append(row)
            last_losses.append((length, l))
            print(f"[train] step {step:5d} t {row['t']:5.0f}s p {p:.2f} len {length:5d} "
                  f"x{ids.shape[0]:<3d} lr {lr:.2e} loss {l:.4f} gnorm {float(gnorm):.2f} "
                  f"{row['tok_per_s'] / 1e3:.0f}K tok/s", flush=True)
            acc.update(loss=torch.zeros((), device=device), n=0, tokens=0, t=time.time())
        if step % args.eval_every == 0 and time.time() < train_end:
            te = time.time()
            e = heldout_eval(model, quick, args.tail, args.tokens_per_step)
            history.append({"step": step, "t": round(time.time() - t0, 1), **e})
            print(f"[eval] step {step} ({time.time() - te:.1f} s): held-out {e['loss']:.4f}; "
                  f"last {args.tail} given " + ", ".join(f"{w}: {v:.4f}" for w, v in
                                                         e["windows"].items()), flush=True)
    train_s = time.time() - train_start
    print(f"[train] done: {step} steps, {tokens_total / 1e6:.1f}M tokens in {train_s:.0f} s",
          flush=True)
    stream = None  # frees the training stream (the batch closure holds the name)
    torch.cuda.empty_cache()

    # Final eval on the master weights, save, reload, eval the saved weights.
    tf = time.time()
    master = heldout_eval(model, rows, args.tail, args.tokens_per_step)
    print("[final] fp32 master weights, bf16 autocast:\n" + format_eval(master), flush=True)
    save_model(model, args.out, args.data_dir, args)
    del model, opt
    torch.cuda.empty_cache()
    saved = demo.load_saved(args.out, device)
    final = heldout_eval(saved, rows, args.tail, args.tokens_per_step, autocast=False)
    table = format_eval(final)
    print("[final] saved bf16 model reloaded from disk:\n" + table, flush=True)
    prompt = rows[0, :256].long()[None]
    try:
        with torch.no_grad():
            out = saved.generate(prompt, max_new_tokens=48, do_sample=False)
        sample = tok.decode(out[0, 256:].tolist())
        print(f"[final] greedy continuation of a held-out row: {sample!r}", flush=True)
    except Exception as e:  # noqa: BLE001 - informative only
        sample = f"(generate failed: {type(e).__name__}: {e})"
        print(f"[final] {sample}", flush=True)
    texts = [tok.decode(rows[i, :400].tolist()) for i in range(min(4, n_rows))]
    texts += ["def f(self, x: int = 3) -> None:\n    return x  # ok\n", "\t\tα = 'é'\r\n"]
    hf_tok = hf_tokenizer_check(args.out, tok, texts)
    print(f"[final] transformers tokenizer: {hf_tok}", flush=True)

    final_s = time.time() - tf
    wall_s = time.time() - t0
    final_len = phases[-1][1]
    tail_losses = [l for L, l in last_losses if L == final_len] or [l for _, l in last_losses]
    final_loss = sum(tail_losses) / max(1, len(tail_losses))
    size_mib = os.path.getsize(os.path.join(args.out, "model.safetensors")) / 2**20
    r = report
    data_report = (f"{r['files']:,} files, {r['bytes'] / 2**20:.0f} MiB, {r['tokens'] / 1e6:.1f}M "
                   f"tokens, in {r['groups']:,} directories of {r['packages']} packages "
                   f"(largest, MiB: {', '.join(f'{k} {v}' for k, v in list(r['top_packages_mb'].items())[:10])}); "
                   f"held out: {r['heldout_files']:,} files in {r['heldout_groups']} directories, "
                   f"{r['heldout_tokens'] / 1e6:.1f}M tokens. Left out: "
                   + "; ".join(f"{k} {v['files']:,}" for k, v in r["left_out"].items()) + ".")
    curriculum = "; ".join(f"until {int(100 * e)}%: {n} tokens" for e, n in phases)
    card = MODEL_CARD.format(
        sources="`*.py` and `*.pyi` (stubs after their modules)" if args.with_stubs else "`*.py`",
        params_m=n_params / 1e6, params=f"{n_params:,}", heldout=table, last_n=len(tail_losses)
        * args.log_every, final_loss=final_loss, data_report=data_report,
        overlap=args.stdlib_overlap, max_file_kb=args.max_file_kb,
        heldout_pct=args.heldout_permille / 10, hidden=args.hidden, layers=args.layers,
        heads=args.heads, kv_heads=args.kv_heads, head_dim=args.head_dim,
        intermediate=args.intermediate, rope_theta=args.rope_theta, max_len=args.max_len,
        vocab=vocab, size_mib=size_mib, tok_v=tokenizers.__version__,
        tok_files=r["sample_files"], tok_mib=r["sample_bytes"] / 2**20,
        bytes_per_token=r["bytes_per_token"], hf_tok=hf_tok, curriculum=curriculum,
        tokens_per_step=args.tokens_per_step, fused=fused, lr=args.lr, warmup=args.warmup_steps,
        min_lr_frac=args.min_lr_frac, wd=args.weight_decay, clip=args.grad_clip, sdpa=sdpa,
        steps=step, tokens_m=tokens_total / 1e6, epochs=tokens_total / max(1, len(train_np)),
        train_s=train_s, train_limit_s=60 * args.train_min, command=command, wall_s=wall_s,
        data_s=data_s, data_note=(" from the cache; prepared in "
                                  f"{r['prepare_s']:.0f} s" if data_s < r["prepare_s"] else ""),
        setup_s=setup_s, final_s=final_s, gpu=gpu, torch_v=torch.__version__,
        tf_v=transformers.__version__, py_v=platform.python_version())
    with open(os.path.join(args.out, "README.md"), "w") as f:
        f.write(card)
    log = {"command": command, "args": vars(args), "data": report, "wall_s": wall_s,
           "data_s": data_s, "setup_s": setup_s, "train_s": train_s, "final_s": final_s,
           "steps": step, "tokens": tokens_total, "params": n_params, "sdpa": sdpa,
           "final_train_loss": final_loss, "heldout_master": master, "heldout": final,
           "greedy_sample": sample, "hf_tokenizer": hf_tok, "eval_history": history,
           "train_log": log_rows}
    with open(os.path.join(args.out, "training_log.json"), "w") as f:
        json.dump(log, f, indent=1)
        f.write("\n")
    print(f"[done] {args.out}: model.safetensors {size_mib:.1f} MiB; wall {wall_s:.0f} s (data "
          f"{data_s:.0f}, setup {setup_s:.0f}, train {train_s:.0f}, final {final_s:.0f}); "
          f"held-out loss {final['loss']:.4f}", flush=True)
    return 0


# ----------------------------------------------------------------------------------------------
# Main.

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="output model directory (default "
                   "models/squeeze-code, or /tmp/squeeze-code-smoke with --smoke)")
    p.add_argument("--data-dir", default=None, help="cache of the tokenizer and token streams "
                   "(default build-code-data, or /tmp/squeeze-code-smoke-data with --smoke)")
    p.add_argument("--smoke", action="store_true", help="tiny end-to-end run (~1.5 min)")
    p.add_argument("--prepare-only", action="store_true",
                   help="collect, tokenize and cache the data, then stop (no GPU needed)")
    p.add_argument("--cpu-check", action="store_true",
                   help="report the data collection (and check a small tokenizer if `tokenizers` "
                        "is installed); no torch, no output")
    p.add_argument("--time-budget-min", type=float, default=None,
                   help="wall-clock budget of the whole command (default 9.6; smoke 1.5)")
    p.add_argument("--train-min", type=float, default=None,
                   help=f"training time limit in minutes (default and at most {MAX_TRAIN_MIN:g})")
    p.add_argument("--final-reserve-s", type=float, default=None,
                   help="seconds kept for the final eval and save (default 45; smoke 20)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workers", type=int, default=max(1, os.cpu_count() or 1))
    # Data.
    p.add_argument("--roots", nargs="*", default=None,
                   help="package directories to read (default: this Python's site-/dist-packages)")
    p.add_argument("--stdlib-like", nargs="*", default=[],
                   help="more standard-library directories to exclude by content (e.g. the "
                        "codebase benchmark's python3.11 when it differs from this Python's)")
    p.add_argument("--stdlib-overlap", type=float, default=0.5,
                   help="leave out a file sharing more than this fraction of its long lines with "
                        "the standard library")
    p.add_argument("--max-file-kb", type=int, default=512)
    p.add_argument("--with-stubs", action="store_true",
                   help="train on the packages' *.pyi stubs too: a stub follows its module and "
                        "repeats its signatures (long-range recall); standard-library stubs "
                        "(typeshed) never")
    p.add_argument("--max-corpus-mb", type=float, default=None,
                   help="read at most about this much source (whole directories; default 3000, "
                        "smoke 24)")
    p.add_argument("--heldout-permille", type=int, default=None,
                   help="held-out directories per thousand (default 20; smoke 60)")
    # Tokenizer.
    p.add_argument("--vocab-size", type=int, default=None, help="default 8192; smoke 2048")
    p.add_argument("--tok-sample-mb", type=float, default=None, help="default 96; smoke 4")
    # Model.
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--intermediate", type=int, default=640)
    p.add_argument("--rope-theta", type=float, default=500000.0)
    p.add_argument("--max-len", type=int, default=16384,
                   help="longest row = max_position_embeddings")
    # Optimisation.
    p.add_argument("--curriculum", default=DEFAULT_CURRICULUM,
                   help="row lengths over the training time, END:LENGTH,... (default "
                        "%(default)s)")
    p.add_argument("--tokens-per-step", type=int, default=131072)
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--min-lr-frac", type=float, default=0.1)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    # Logging and eval.
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--eval-rows", type=int, default=64, help="held-out rows at the end")
    p.add_argument("--eval-quick-rows", type=int, default=4, help="held-out rows during training")
    p.add_argument("--tail", type=int, default=2048,
                   help="scored tokens at the end of a held-out row, given windows of growing "
                        "length")
    args = p.parse_args(argv)
    if args.smoke:
        defaults = dict(time_budget_min=1.5, train_min=1.5, final_reserve_s=20,
                        out="/tmp/squeeze-code-smoke", data_dir="/tmp/squeeze-code-smoke-data",
                        max_corpus_mb=24, heldout_permille=60, vocab_size=2048, tok_sample_mb=4)
        args.layers, args.hidden, args.heads, args.kv_heads = 2, 128, 4, 2
        args.head_dim, args.intermediate, args.max_len = 32, 384, 2048
        args.curriculum, args.tokens_per_step, args.warmup_steps = "0.5:512,1:2048", 16384, 20
        args.log_every, args.eval_every, args.eval_rows, args.tail = 10, 50, 8, 512
    else:
        defaults = dict(time_budget_min=9.6, train_min=MAX_TRAIN_MIN, final_reserve_s=45,
                        out="models/squeeze-code", data_dir="build-code-data",
                        max_corpus_mb=3000, heldout_permille=20, vocab_size=8192,
                        tok_sample_mb=96)
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.train_min > MAX_TRAIN_MIN:
        p.error(f"--train-min {args.train_min} exceeds the {MAX_TRAIN_MIN:g}-minute limit")
    if args.heads % args.kv_heads:
        p.error("--heads must be a multiple of --kv-heads")
    if not args.smoke and count_params(args, args.vocab_size) > MAX_PARAMS:
        p.error(f"the model would have {count_params(args, args.vocab_size):,} parameters, more "
                f"than {MAX_PARAMS:,}")
    if args.tail >= args.max_len:
        p.error("--tail must be shorter than --max-len")
    try:
        parse_curriculum(args.curriculum, args.max_len)
    except ValueError as e:
        p.error(str(e))
    return args


def main(argv=None) -> int:
    t0 = time.time()
    args = parse_args(argv)
    command = "python3 tools/train_code_model.py " + " ".join(sys.argv[1:] if argv is None
                                                              else argv)
    if args.cpu_check:
        return cpu_check(args)
    print(f"[setup] {count_params(args, args.vocab_size):,} parameters planned; budget "
          f"{args.time_budget_min} min, training at most {args.train_min} min", flush=True)
    meta = prepare_data(args)
    if args.prepare_only:
        print(f"[done] data in {args.data_dir} ({time.time() - t0:.0f} s)", flush=True)
        return 0
    return train(args, meta, t0, command)


if __name__ == "__main__":
    sys.exit(main())
