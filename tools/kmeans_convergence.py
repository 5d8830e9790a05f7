#!/usr/bin/python3
"""How fast the index's k-means converges on a real model's real keys.

    squeeze-cli --server=HOST:PORT tokenize "$(cat FILES...)" | grep -P '^\\d+\\t' | cut -f1 > ids
    /usr/bin/python3 tools/kmeans_convergence.py --model models/squeeze-code --ids ids \\
        --tokens 8192 [--fraction 0.05] [--window 100] [--iterations 25] [--json out.json]

Runs the NumPy forward of tools/reference_forward.py over the first --tokens ids, keeps every
layer's post-RoPE keys, and clusters each (layer, KV head)'s clustered keys (all but the last
--window, as the index does) with the index's k-means (engine/backend/kmeans.h: unit-normalised
points, k-means++ seeding on the sphere, assignment by the highest cosine, centres re-normalised
means; k = ceil(fraction * M)), up to --iterations assignment steps or until no label changes.
Prints, per head, the objective (sum of the winning cosines) after 5, 10 and 15 steps relative to
the last, and the fraction of labels that changed at those steps: what an early stop on the
changed fraction (the CUDA solver's CudaKMeansOptions::min_changed_fraction) would give up.
Needs only NumPy (Debian python3-numpy); float64 throughout.
"""

import argparse
import json
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_forward as rf  # noqa: E402


def layer_keys(model, ids):
    """{layer: [T, Hkv, d] post-RoPE keys} from the reference forward (q and k go through
    rope() in that order once per layer)."""
    keys, calls = {}, [0]
    plain = rf.rope

    def capture(x, cos, sin):
        y = plain(x, cos, sin)
        calls[0] += 1
        if calls[0] % 2 == 0:
            keys[calls[0] // 2 - 1] = y.copy()
        return y

    rf.rope = capture
    try:
        rf.forward(model, ids)
    finally:
        rf.rope = plain
    return keys


def spherical_kmeans(x, k, iterations, rng):
    """(objective per step, labels changed per step) of the index's k-means on rows of x."""
    m = x.shape[0]
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)
    centres = [x[rng.integers(m)]]
    d2 = 2 - 2 * (x @ centres[0])
    for _ in range(k - 1):
        p = np.maximum(d2, 0)
        if p.sum() <= 0:
            break
        c = x[rng.choice(m, p=p / p.sum())]
        centres.append(c)
        d2 = np.minimum(d2, 2 - 2 * (x @ c))
    centres = np.stack(centres)
    labels = np.full(m, -1)
    objective, changed = [], []
    for _ in range(iterations):
        scores = x @ centres.T
        new = scores.argmax(axis=1)
        objective.append(float(scores[np.arange(m), new].sum()))
        changed.append(int((new != labels).sum()))
        labels = new
        if changed[-1] == 0:
            break
        for c in range(centres.shape[0]):
            members = x[labels == c]
            if len(members):
                mean = members.sum(axis=0)
                norm = np.linalg.norm(mean)
                if norm > 0:
                    centres[c] = mean / norm
    return objective, changed


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--ids", required=True, help="token ids, one per line")
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--fraction", type=float, default=0.05)
    ap.add_argument("--window", type=int, default=100)
    ap.add_argument("--iterations", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default="")
    args = ap.parse_args()

    with open(args.ids, encoding="utf-8") as f:
        ids = [int(x) for x in f.read().split()][: args.tokens]
    m = len(ids) - args.window
    if m < 2:
        raise SystemExit(f"{len(ids)} tokens: fewer than the window + 2")
    k = math.ceil(args.fraction * m)
    keys = layer_keys(args.model, ids)
    rng = np.random.default_rng(args.seed)
    print(f"{len(ids)} tokens, {m} clustered keys per head, k = {k}")
    print("| layer | head | steps | objective at 5 / 10 / 15 over the last | labels changed at "
          "5 / 10 / 15 |")
    print("|---|---|---|---|---|")
    curves = []
    for layer in sorted(keys):
        for h in range(keys[layer].shape[1]):
            objective, changed = spherical_kmeans(keys[layer][:m, h, :], k, args.iterations, rng)
            steps = [i for i in (4, 9, 14) if i < len(objective)]
            rel = " / ".join(f"{objective[i] / objective[-1]:.5f}" for i in steps)
            frac = " / ".join(f"{100 * changed[i] / m:.2f}%" for i in steps)
            print(f"| {layer} | {h} | {len(objective)} | {rel} | {frac} |", flush=True)
            curves.append(dict(layer=layer, head=h, objective=objective, changed=changed))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(dict(tokens=len(ids), clustered=m, k=k, curves=curves), f)


if __name__ == "__main__":
    main()
