#!/usr/bin/env python3
"""The codebase benchmark through a running squeeze-server (issue: accuracy that means something).

Reads the task files of tools/codebase_tasks.py (retrieval-<L>k.jsonl, retrieval-<L>k-noctx.jsonl,
loss-<L>k.jsonl) and runs every cell (attention setting x length) through the public API, the way
an application would: each fixed context registered once (tasks of one context are consecutive
and share its context_id), the question or the continuation sent as the Generate input.

  retrieval  greedy, at most --max-tokens tokens, stop at a newline; exact match of the stripped
             text with the stripped answer. 95% Wilson interval. The no-context tasks (dense, the
             context reduced to the file's header line) show how much of it the context gives.
  loss       the continuation sent with prompt_logprobs: the mean per-token negative log-likelihood
             of its tokens after the first (the first is scored by no row of the input), per task,
             then averaged over tasks with a 95% normal interval. Given the full context (each
             attention setting), the module's own beginning only (dense), and nothing (dense; the
             input then starts with BOS and the same tokens are scored).

Settings: --settings "dense,squeezed:0.1,squeezed:0.05,squeezed-step:0.1,pages:0.1,recent:0.1"
(squeezed-step: the per-step budget policy; pages: the Quest-style page baseline; recent: the
most recent keys; squeezed-w800:0.1 / squeezed-step-w800:0.1: the contexts registered again with
an index that keeps their last 800 tokens whole, the index's `window`, instead of 100;
squeezed-mc0.005:0.1: registered again with the k-means' early stop `kmeans_min_changed` 0.005;
squeezed-qb64:0.1: the input selected per block of 64 tokens, `query_block`, on the same index;
squeezed-qb4-tail:0.03: and the dropped clusters estimated from their centroids, `estimate_tail`,
CPU servers only).
Requests run --concurrency at a time (the server batches them); contexts are
registered first, one at a time. Prints one markdown table per task kind and writes --json;
every setting is also compared with dense on the same tasks (paired differences with a 95%
interval: the settings share their tasks, so these are far narrower than the cells' own).

  python3 bench/codebase_bench.py --server 127.0.0.1:50051 --tasks DIR [--limit N]
bench/run_codebase.sh starts the server, makes the tasks and runs this.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor, as_completed


def wilson(k, n, z=1.96):
    """95% Wilson score interval of k successes in n trials, as (low, high)."""
    if n == 0:
        return (0.0, 0.0)
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, mid - half), min(1.0, mid + half))


def mean_ci(values, z=1.96):
    """Mean and the half-width of its 95% normal interval."""
    n = len(values)
    if n == 0:
        return (float("nan"), float("nan"))
    m = sum(values) / n
    if n == 1:
        return (m, float("nan"))
    var = sum((v - m) ** 2 for v in values) / (n - 1)
    return (m, z * math.sqrt(var / n))


def paired_vs(values, base, z=1.96):
    """Paired difference of per-task values against the baseline's on the same tasks: (mean of
    values[i] - base[i], half-width of its 95% normal interval). Much narrower than the two
    settings' own intervals when the tasks vary more than the settings do."""
    return mean_ci([v - b for v, b in zip(values, base)], z)


def parse_settings(text):
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, _, budget = item.partition(":")
        # Index options of the contexts a squeezed setting reads, as name suffixes (any order):
        # -wN, an always-kept window of the last N tokens (the index's `window`; default 100);
        # -mcF, the k-means' early stop (`kmeans_min_changed` F, e.g. 0.005; default the
        # server's). E.g. squeezed-w400:0.05, squeezed-mc0.005:0.1. And a request option:
        # -qbN, the input selected per block of N tokens (`query_block`; beyond the paper), and
        # -tail, the dropped clusters estimated from their centroids (`estimate_tail`; CPU).
        index = {}
        query_block = None
        estimate_tail = False
        while True:
            base, sep, tail = name.rpartition("-")
            if not sep or not base.startswith("squeezed"):
                break
            if tail.startswith("w") and tail[1:].isdigit():
                index["window"] = int(tail[1:])
            elif tail.startswith("mc") and is_fraction(tail[2:]):
                index["kmeans_min_changed"] = float(tail[2:])
            elif tail.startswith("qb") and tail[2:].isdigit():
                query_block = int(tail[2:])
            elif tail == "tail":
                estimate_tail = True
            else:
                break
            name = base
        if name == "dense":
            out.append((item, dict(mode="dense")))
        elif name in ("squeezed", "squeezed-step", "pages", "recent"):
            if not budget:
                raise SystemExit(f"setting {item!r}: give a budget, e.g. {name}:0.1")
            opts = dict(mode="squeezed" if name.startswith("squeezed") else name,
                        budget=float(budget))
            if name == "squeezed-step":
                opts["budget_policy"] = "per_step"
            if index:
                opts["index"] = index
            if query_block is not None:
                opts["query_block"] = query_block
            if estimate_tail:
                opts["estimate_tail"] = True
            out.append((item, opts))
        else:
            raise SystemExit(f"unknown setting {item!r} (dense, squeezed:B, squeezed-step:B, "
                             "their -wN and -mcF index suffixes, -qbN and -tail, pages:B, recent:B)")
    return out


def is_fraction(text):
    try:
        return 0.0 <= float(text) < 1.0
    except ValueError:
        return False


def read_jsonl(path, limit):
    tasks = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                tasks.append(json.loads(line))
                if limit and len(tasks) >= limit:
                    break
    return tasks


class Registry:
    """Registers each distinct context once (the server reuses identical content by its hash)."""

    def __init__(self, client, prefix):
        self.client = client
        self.prefix = prefix
        self.names = {}
        self.seconds = 0.0

    def name(self, key, text, index=None):
        """The registered name of `text` (under `key`), registered now if new; with `index`
        (IndexOptions fields, e.g. {"window": 400}), a copy indexed with those options."""
        key = (key, tuple(sorted((index or {}).items())))
        if key not in self.names:
            name = f"{self.prefix}-{len(self.names)}"
            start = time.monotonic()
            self.client.register_context(name, text, index=index or None)
            self.seconds += time.monotonic() - start
            self.names[key] = name
        return self.names[key]

    def release(self):
        for name in self.names.values():
            try:
                self.client.delete_context(name)
            except Exception:  # already gone: nothing to release
                pass
        self.names.clear()


def run_pool(jobs, concurrency, progress):
    """Runs the callables in jobs, concurrency at a time; their results in order."""
    results = [None] * len(jobs)
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        futures = {pool.submit(job): i for i, job in enumerate(jobs)}
        for done, future in enumerate(as_completed(futures), 1):
            results[futures[future]] = future.result()
            progress(done, len(jobs))
    return results


def run_retrieval(client, registry, tasks, settings, max_tokens, concurrency, progress):
    """{setting: [correct...]} over the tasks, and the realised KV budgets."""
    def job(task, opts):
        request = dict(opts)
        context = registry.name(("ctx", task.get("context_id", task["id"])), task["context"],
                                request.pop("index", None))
        return lambda: client.complete(task["question"], context, max_tokens=max_tokens,
                                       temperature=0, stop=["\n"], **request)
    jobs = [job(t, opts) for t in tasks for _, opts in settings]
    done = run_pool(jobs, concurrency, progress)
    correct = OrderedDict((label, []) for label, _ in settings)
    budgets = OrderedDict((label, []) for label, _ in settings)
    context_tokens = []
    for i, task in enumerate(tasks):
        for j, (label, _) in enumerate(settings):
            completion = done[i * len(settings) + j]
            correct[label].append(completion.text.strip() == task["answer"].strip())
            budgets[label].append(completion.usage.kv_budget)
        context_tokens.append(done[i * len(settings)].usage.context_tokens)
    return correct, budgets, context_tokens


def run_retrieval_noctx(client, tasks, max_tokens, concurrency, progress):
    def job(task):
        return lambda: client.complete(task["context"] + task["question"], "",
                                       max_tokens=max_tokens, temperature=0, stop=["\n"],
                                       mode="dense")
    done = run_pool([job(t) for t in tasks], concurrency, progress)
    return [c.text.strip() == t["answer"].strip() for c, t in zip(done, tasks)]


def mean_nll(completion, skip_first):
    """Mean negative log-likelihood of the scored input tokens; with skip_first, the first scored
    token is left out (it is the first continuation token, scored only without a context)."""
    scores = [-lp.logprob for lp in completion.prompt_logprobs]
    if skip_first:
        scores = scores[1:]
    if not scores:
        raise RuntimeError("no input token was scored")
    return sum(scores) / len(scores)


def run_loss(client, registry, tasks, settings, concurrency, progress):
    """{label: [mean nll per task]} for every setting, the module-only and no-context baselines,
    and {label: [realised KV budget per task]} for the settings (the scored continuation is one
    multi-token step against the context: its selection's kept fraction)."""
    rows = []  # (label, job, skip_first)
    for task in tasks:
        module = registry.name(("module", task["id"]), task["module_context"])

        def job(text, ctx, opts):
            return lambda: client.complete(text, ctx, max_tokens=1, temperature=0,
                                           prompt_logprobs=0, **opts)
        for label, opts in settings:
            request = dict(opts)
            context = registry.name(("ctx", task["id"]), task["context"],
                                    request.pop("index", None))
            rows.append((label, job(task["continuation"], context, request), False))
        rows.append(("module only (dense)", job(task["continuation"], module,
                                                dict(mode="dense")), False))
        # No context: the input is [BOS] + the continuation, so its first token is scored too.
        rows.append(("no context (dense)", job(task["continuation"], "", dict(mode="dense")),
                     True))
    done = run_pool([job for _, job, _ in rows], concurrency, progress)
    out = OrderedDict((label, []) for label, _ in settings)
    out["module only (dense)"] = []
    out["no context (dense)"] = []
    budgets = OrderedDict((label, []) for label, _ in settings)
    for (label, _, skip_first), completion in zip(rows, done):
        out[label].append(mean_nll(completion, skip_first=skip_first))
        if label in budgets:
            budgets[label].append(completion.usage.kv_budget)
    return out, budgets


def markdown_table(title, header, rows):
    """Prints a titled markdown table: header the column names, rows lists of cell texts."""
    print(f"\n{title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def or_dash(x, text):
    """text, or "-" where x is NaN (no such measure for the row)."""
    return "-" if math.isnan(x) else text


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", default="127.0.0.1:50051")
    ap.add_argument("--tasks", required=True, help="directory of tools/codebase_tasks.py output")
    ap.add_argument("--lengths", default="8,16", help="context lengths in K tokens")
    ap.add_argument("--settings", default="dense,squeezed:0.1,squeezed:0.05,squeezed-step:0.1")
    ap.add_argument("--limit", type=int, default=0, help="tasks per file (0: all)")
    ap.add_argument("--loss-limit", type=int, default=-1,
                    help="loss tasks per length (0: all; default: --limit)")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--concurrency", type=int, default=16,
                    help="requests in flight at once (the server batches them)")
    ap.add_argument("--skip-loss", action="store_true")
    ap.add_argument("--json", default="", help="write the results here")
    args = ap.parse_args()

    import squeeze  # the Python client (client/python), with its generated protobuf modules

    settings = parse_settings(args.settings)
    client = squeeze.Client(args.server, timeout=3600)
    results = {"server": args.server, "settings": [s for s, _ in settings], "cells": []}

    def progress(what):
        def report(i, n):
            if i == n or i % max(25, n // 10) == 0:
                print(f"  {what}: {i}/{n}", file=sys.stderr, flush=True)
        return report

    retrieval_rows, loss_rows, paired_rows = [], [], []
    for k in [int(x) for x in args.lengths.split(",") if x]:
        registry = Registry(client, f"codebench-{k}k")
        path = os.path.join(args.tasks, f"retrieval-{k}k.jsonl")
        if os.path.exists(path):
            tasks = read_jsonl(path, args.limit)
            start = time.monotonic()
            correct, budgets, ctx_tokens = run_retrieval(client, registry, tasks, settings,
                                                         args.max_tokens, args.concurrency,
                                                         progress(f"retrieval {k}K"))
            ctx_tokens.sort()
            results["cells"].append({"kind": "context_tokens", "length_k": k,
                                     "min": ctx_tokens[0], "median": ctx_tokens[len(ctx_tokens) // 2],
                                     "max": ctx_tokens[-1]})
            print(f"retrieval {k}K: context tokens as the server counts them: min "
                  f"{ctx_tokens[0]}, median {ctx_tokens[len(ctx_tokens) // 2]}, max "
                  f"{ctx_tokens[-1]}", file=sys.stderr)
            for label, hits in correct.items():
                low, high = wilson(sum(hits), len(hits))
                realised = sum(budgets[label]) / max(len(budgets[label]), 1)
                retrieval_rows.append((f"{k}K", label, sum(hits), len(hits), low, high, realised))
                cell = {"kind": "retrieval", "length_k": k, "setting": label,
                        "correct": sum(hits), "tasks": len(hits), "ci95": [low, high],
                        "kv_budget": realised}
                if "dense" in correct and label != "dense":
                    diff, half = paired_vs([float(h) for h in hits],
                                           [float(h) for h in correct["dense"]])
                    cell["paired_vs_dense"] = {"diff": diff, "ci95_half": half}
                    paired_rows.append((f"{k}K", "retrieval, points", label, 100 * diff,
                                        100 * half, float("nan")))
                results["cells"].append(cell)
            noctx = os.path.join(args.tasks, f"retrieval-{k}k-noctx.jsonl")
            if os.path.exists(noctx):
                hits = run_retrieval_noctx(client, read_jsonl(noctx, args.limit), args.max_tokens,
                                           args.concurrency,
                                           progress(f"retrieval {k}K, no context"))
                low, high = wilson(sum(hits), len(hits))
                retrieval_rows.append((f"{k}K", "no context (dense)", sum(hits), len(hits), low,
                                       high, float("nan")))
                results["cells"].append({"kind": "retrieval", "length_k": k,
                                         "setting": "no context", "correct": sum(hits),
                                         "tasks": len(hits), "ci95": [low, high]})
            print(f"retrieval {k}K: {len(tasks)} tasks in {time.monotonic() - start:.0f} s "
                  f"({registry.seconds:.0f} s registering)", file=sys.stderr)
        path = os.path.join(args.tasks, f"loss-{k}k.jsonl")
        if not args.skip_loss and os.path.exists(path):
            tasks = read_jsonl(path, args.loss_limit if args.loss_limit >= 0 else args.limit)
            losses, loss_budgets = run_loss(client, registry, tasks, settings, args.concurrency,
                                            progress(f"loss {k}K"))
            for label, values in losses.items():
                m, half = mean_ci(values)
                spent = loss_budgets.get(label, [])
                realised = sum(spent) / len(spent) if spent else float("nan")
                loss_rows.append((f"{k}K", label, len(values), m, half, realised))
                cell = {"kind": "loss", "length_k": k, "setting": label, "tasks": len(values),
                        "mean_nll": m, "ci95_half": half}
                if spent:
                    cell["kv_budget"] = realised
                if "dense" in losses and label != "dense":
                    diff, dhalf = paired_vs(values, losses["dense"])
                    relative = diff / mean_ci(losses["dense"])[0]
                    cell["paired_vs_dense"] = {"diff": diff, "ci95_half": dhalf,
                                               "relative": relative}
                    paired_rows.append((f"{k}K", "loss, nats/token", label, diff, dhalf,
                                        relative))
                results["cells"].append(cell)
        registry.release()
        if args.json:  # after every length, so a run stopped early keeps what it measured
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(results, f, indent=1)

    if retrieval_rows:
        markdown_table(
            "Retrieval exact match (95% Wilson interval):",
            ["length", "setting", "exact match", "95% CI", "tasks", "realised KV budget"],
            [[length, label, f"{100 * k / max(n, 1):.1f}%", f"{100 * low:.1f}-{100 * high:.1f}%",
              str(n), or_dash(realised, f"{realised:.3f}")]
             for length, label, k, n, low, high, realised in retrieval_rows])
    if loss_rows:
        markdown_table(
            "Loss of a module's continuation, nats per token (mean over tasks, 95% CI):",
            ["length", "given", "loss", "95% CI", "tasks", "realised KV budget"],
            [[length, label, f"{m:.3f}", f"±{half:.3f}", str(n),
              or_dash(realised, f"{realised:.3f}")]
             for length, label, n, m, half, realised in loss_rows])
    if paired_rows:
        markdown_table(
            "Against dense on the same tasks (paired difference, 95% CI):",
            ["length", "measure", "setting", "minus dense", "95% CI", "relative"],
            [[length, measure, label, f"{diff:+.3f}", f"±{half:.3f}",
              or_dash(relative, f"{100 * relative:+.1f}%")]
             for length, measure, label, diff, half, relative in paired_rows])
    client.close()


if __name__ == "__main__":
    main()
