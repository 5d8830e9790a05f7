#!/usr/bin/env python3
"""Decode-attention baseline through torch.nn.functional.scaled_dot_product_attention.

Same shapes and timing method as bench/gpu_attention_bench.cu: Llama-3-8B attention (32 query
heads, 8 KV heads, d = 128, bf16), one new query token per sequence over S + 256 cached rows,
batch 1 and 8, contexts 32K / 128K / 512K (512K at batch 1 only). Each SDPA backend (cuDNN,
flash, memory-efficient) is forced with torch.nn.attention.sdpa_kernel and tried in two GQA
layouts:
  gqa    q [B, 32, 1, d], k/v [B, 8, L, d], enable_gqa=True
  packed q viewed as [B, 8, 4, d] (the 4 query heads of a group as 4 query rows, no mask), k/v
         [B, 8, L, d]: the same attention, each K/V byte read once per group.
A backend/layout that refuses the shape is reported and skipped. Timing: the L2 flushed (256 MB
zero_) before each rep, torch.cuda.Event around the call, median of the reps. Bytes = K + V.
Prints a table and, with --csv, writes rows the run script combines with ours.
"""
import argparse
import csv
import math
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

HQ, HKV, D, DYN = 32, 8, 128, 256
G = HQ // HKV


def median_us(fn, reps, flush):
    for _ in range(3):
        flush.zero_()
        fn()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        flush.zero_()
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    t = sorted(s.elapsed_time(e) * 1e3 for s, e in zip(starts, ends))
    return t[len(t) // 2]


def copy_bandwidth(reps=10):
    a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda").fill_(1)
    b = torch.empty_like(a)
    times = []
    for i in range(reps + 2):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        b.copy_(a)
        e.record()
        e.synchronize()
        if i >= 2:
            times.append(s.elapsed_time(e) * 1e-3)
    times.sort()
    del a, b
    return 2 * (1 << 30) / times[len(times) // 2]


PREFILL_LENS = [16384, 32768, 65536, 131072]


def run_prefill(args, reps):
    """Causal prefill baseline for bench/gpu_prefill_bench.cu: q [1, 32, n, d], k/v [1, 8, n, d]
    bf16, is_causal=True (past = 0), cuDNN and flash backends, layouts gqa (enable_gqa=True) and
    expanded (k/v repeated to 32 heads). FLOPs 4 * n^2 / 2 * d * Hq; same timing as decode (the
    L2 flushed before each rep, events, median). rel_err: 3 (query, head 0) rows vs fp32 math.
    CSV columns: the decode ones plus tflops (gbps and copy_gbps 0)."""
    lens = PREFILL_LENS[:2] if args.quick else PREFILL_LENS
    flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(0)
    backends = [("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)]
    rows = []
    for n in lens:
        q = torch.randn(1, HQ, n, D, dtype=torch.bfloat16, device="cuda", generator=gen)
        k = torch.randn(1, HKV, n, D, dtype=torch.bfloat16, device="cuda", generator=gen)
        v = torch.randn(1, HKV, n, D, dtype=torch.bfloat16, device="cuda", generator=gen)
        ke, ve = k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1)
        flops = 4.0 * n * n / 2 * D * HQ
        ts = [0, n // 2 + 7, n - 1]
        refs = []
        for t in ts:
            s = (q[0, 0, t].float() @ k[0, 0, : t + 1].float().T) / math.sqrt(D)
            refs.append(torch.softmax(s, dim=-1) @ v[0, 0, : t + 1].float())
        ref = torch.stack(refs)
        for name, backend in backends:
            for layout in ("gqa", "expanded"):
                if layout == "gqa":
                    fn = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                                enable_gqa=True)
                else:
                    fn = lambda: F.scaled_dot_product_attention(q, ke, ve, is_causal=True)
                try:
                    with sdpa_kernel([backend]):
                        out = fn()
                        torch.cuda.synchronize()
                        o = out[0, 0, ts].float()
                        err = ((o - ref).norm() / ref.norm()).item()
                        us = median_us(fn, reps, flush)
                except Exception as e:  # the backend refuses this shape/layout
                    text = str(e).strip()
                    msg = text.splitlines()[0][:100] if text else type(e).__name__
                    print(f"prefill n={n} {name}/{layout}: unavailable ({msg})")
                    continue
                rows.append(dict(impl=f"torch_{name}", batch=1, context=n,
                                 path=f"prefill-causal-{layout}", kept_frac=1.0, time_us=us,
                                 bytes=0, gbps=0, copy_gbps=0,
                                 tflops=flops / (us * 1e-6) / 1e12, rel_err=err))
                print(f"prefill n={n:<7} torch_{name:<6} {layout:<9} {us:12.1f} us "
                      f"{rows[-1]['tflops']:7.1f} TFLOP/s rel_err {err:.2e}", flush=True)
        del q, k, v, ke, ve
        torch.cuda.empty_cache()
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0].keys()) if rows else ["impl"])
            w.writeheader()
            w.writerows(rows)
    return 0


def run_context_prefill(args, reps):
    """Dense attention of a user input against a registered context, the baseline of
    gpu-forward-bench --query_tokens: q [1, 32, n, d] against k/v [1, 8, S + n, d] (the context
    and the input itself), bf16, cuDNN and flash. Without the causal mask over the input's own
    n x n block (torch's is_causal aligns it top-left for n < S + n): n^2/2 extra key reads
    against n * S, under 2% at n = 4096, S = 128K."""
    props = torch.cuda.get_device_properties(0)
    print(f"device: {props.name}, torch {torch.__version__}, "
          f"cuDNN {torch.backends.cudnn.version()}")
    flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(0)
    S = args.context
    for n in [int(x) for x in args.query_tokens.split(",")]:
        q = torch.randn(1, HQ, n, D, device="cuda", dtype=torch.bfloat16, generator=gen)
        k = torch.randn(1, HKV, S + n, D, device="cuda", dtype=torch.bfloat16, generator=gen)
        v = torch.randn(1, HKV, S + n, D, device="cuda", dtype=torch.bfloat16, generator=gen)
        flops = 4.0 * n * (S + n) * D * HQ
        for name, backend in [("cudnn", SDPBackend.CUDNN_ATTENTION),
                              ("flash", SDPBackend.FLASH_ATTENTION)]:
            def fn():
                with sdpa_kernel([backend]):
                    return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
            try:
                us = median_us(fn, reps, flush)
            except RuntimeError as e:
                print(f"context-prefill n={n} S={S} torch_{name}: unsupported ({e})")
                continue
            print(f"context-prefill n={n} S={S} torch_{name}: {us / 1e3:.3f} ms per layer, "
                  f"{flops / us / 1e6:.0f} TFLOP/s")
        del q, k, v
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="batch 1 and 8 at 32K only, 5 reps")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--csv", default="")
    ap.add_argument("--prefill", action="store_true",
                    help="causal prefill baseline (see run_prefill) instead of decode")
    ap.add_argument("--context", type=int, default=0,
                    help="context tokens: dense attention of --query_tokens inputs against it "
                         "(see run_context_prefill)")
    ap.add_argument("--query_tokens", default="1024,4096")
    ap.add_argument("--configs", default="",
                    help="decode shapes as BxS,BxS,... (default: gpu-attention-bench's)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("torch_attention_baseline: no CUDA device")
        return 77
    reps = 5 if args.quick else args.reps
    if args.context > 0:
        return run_context_prefill(args, min(reps, 10))
    if args.prefill:
        return run_prefill(args, 3 if args.quick else min(reps, 10))
    props = torch.cuda.get_device_properties(0)
    print(f"device: {props.name}, torch {torch.__version__}, "
          f"cuDNN {torch.backends.cudnn.version()}")
    copy_bw = copy_bandwidth()
    print(f"device-to-device copy: {copy_bw / 1e9:.0f} GB/s (read + write)")
    flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")

    configs = [(1, 32768), (1, 131072), (1, 524288), (8, 32768), (8, 131072), (8, 524288)]
    if args.quick:
        configs = [(1, 32768), (8, 32768)]
    if args.configs:
        configs = [tuple(int(x) for x in item.split("x")) for item in args.configs.split(",")]
    backends = [("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION),
                ("efficient", SDPBackend.EFFICIENT_ATTENTION)]
    rows = []
    gen = torch.Generator(device="cuda").manual_seed(0)
    for batch, context in configs:
        length = context + DYN
        try:
            k = torch.randn(batch, HKV, length, D, dtype=torch.bfloat16, device="cuda",
                            generator=gen)
            v = torch.randn(batch, HKV, length, D, dtype=torch.bfloat16, device="cuda",
                            generator=gen)
        except torch.OutOfMemoryError:
            print(f"skip B={batch} S={context}: out of memory")
            continue
        q = torch.randn(batch, HQ, 1, D, dtype=torch.bfloat16, device="cuda", generator=gen)
        q_packed = q.view(batch, HKV, G, D)
        nbytes = 2 * k.numel() * k.element_size()
        # Reference for a sanity check: fp32 math on the packed layout, one KV head group.
        ref = None
        if batch * length <= 8 * 40000:
            kf, vf = k[:, :1].float(), v[:, :1].float()
            ref = torch.softmax(q_packed[:, :1].float() @ kf.transpose(-1, -2) / math.sqrt(D),
                                dim=-1) @ vf
            del kf, vf
        for name, backend in backends:
            for layout in ("gqa", "packed"):
                if layout == "gqa":
                    fn = lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
                else:
                    fn = lambda: F.scaled_dot_product_attention(q_packed, k, v)
                try:
                    with sdpa_kernel([backend]):
                        out = fn()
                        torch.cuda.synchronize()
                        err = float("nan")
                        if ref is not None:
                            o = out.reshape(batch, HKV, G, D)[:, :1].float()
                            err = ((o - ref).norm() / ref.norm()).item()
                        us = median_us(fn, reps, flush)
                except Exception as e:  # the backend refuses this shape/layout
                    text = str(e).strip()
                    msg = text.splitlines()[0][:100] if text else type(e).__name__
                    print(f"B={batch} S={context} {name}/{layout}: unavailable ({msg})")
                    continue
                gbps = nbytes / (us * 1e-6) / 1e9
                rows.append(dict(impl=f"torch_{name}", batch=batch, context=context,
                                 path=f"dense-{layout}", kept_frac=1.0, time_us=us, bytes=nbytes,
                                 gbps=gbps, copy_gbps=copy_bw / 1e9, rel_err=err))
        del k, v, q, q_packed
        torch.cuda.empty_cache()

    print(f"\n{'B':<3} {'context':<7} {'impl':<16} {'layout':<14} {'time_us':>9} {'GB/s':>7} "
          f"{'%copy':>6} {'rel_err':>9}")
    for r in rows:
        print(f"{r['batch']:<3} {r['context']:<7} {r['impl']:<16} {r['path']:<14} "
              f"{r['time_us']:9.1f} {r['gbps']:7.0f} {100 * r['gbps'] * 1e9 / copy_bw:6.1f} "
              f"{r['rel_err']:9.2e}")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0].keys()) if rows else ["impl"])
            w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
