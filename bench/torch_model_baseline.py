#!/usr/bin/env python3
"""What a user could run instead of Squeeze: a dense Llama decode step in PyTorch.

The Llama-3-8B shape (bench/configs/llama3-8b: 32 layers, hidden 4096, 32 query / 8 KV heads,
head dim 128, MLP 14336, vocab 128256) with random bf16 weights; cuBLAS GEMMs with fused QKV and
gate-up projections, RoPE, and FlashAttention through PyTorch; the whole decode step (all layers,
the final norm, lm_head and a greedy argmax) captured in one CUDA graph and replayed. B sequences
decode together against one shared context of S tokens (random K/V: a decode step's cost does not
depend on the values), each with DYN rows of its own (user input and generated tokens). Two ways to
attend to the shared context:

  per-sequence  each sequence reads the context's K/V on its own (vLLM without cascade attention,
                a paged KV whose prefix blocks are shared): K/V expanded over the batch
  cascade       the context's K/V read once per step for all sequences: the queries of every
                sequence stacked per KV head as rows (vLLM v1's cascade attention, FlashInfer's
                shared-prefix kernels, Hydragen), merged with each sequence's own rows by their
                log-sum-exp

Timing: CUDA graph replays, torch.cuda.Event around 20 replays after 5 warm-ups, median of 3 such
runs. The floor of a step: (weights + the context's K/V once (cascade) or once per sequence
(per-sequence) + the sequences' own K/V) / the device-to-device copy rate measured in the same
run. Prints a table; --json writes the rows.

--prefill N: the same model's prefill instead (what gpu-forward-bench's registration prefill and
--query_tokens compare with): N tokens in chunks of --chunk (8192) into a preallocated K/V cache,
cuBLAS GEMMs, attention on cuDNN (torch's aten cuDNN attention with its log-sum-exp: the chunk's
keys causally, the earlier chunks' keys as one non-causal call with the G query heads of a KV group
stacked as rows, merged exactly); then the time to first token of each --query_tokens input against
the N-token context (one chunk). One timed prefill after a 2-chunk warm-up; inputs median of 3.
Without the aten op (another torch), one SDPA call over all keys without the causal mask (a few
percent more attention work), and the output says so.

  python3 bench/torch_model_baseline.py --context 131072 --batches 1,8,32,64
  python3 bench/torch_model_baseline.py --prefill 131072 --query_tokens 1024,4096
"""
import argparse
import json
import math
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

L, D, HQ, HKV, HD, I, V = 32, 4096, 32, 8, 128, 14336, 128256
G = HQ // HKV
THETA = 500000.0


def copy_bandwidth(reps=10):
    a = torch.empty(1 << 31, dtype=torch.uint8, device="cuda").fill_(1)
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
    return 2 * (1 << 31) / times[len(times) // 2]


def flash_with_lse(q, k, v, scale):
    """Softmax attention with its natural-log lse: q [N, H, Lq, d], k/v [N, H, Lk, d] (same H).
    FlashAttention through aten when it takes the shapes, else the math path (fp32 logits)."""
    try:
        out = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False,
                                                                 scale=scale)
        return out[0], out[1].float()
    except (RuntimeError, TypeError):
        logits = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
        lse = torch.logsumexp(logits, dim=-1)
        p = torch.exp(logits - lse.unsqueeze(-1))
        return torch.matmul(p.to(v.dtype), v), lse


def merge(o1, l1, o2, l2):
    """Exact merge of two partials over disjoint key sets (natural-log lse)."""
    m = torch.maximum(l1, l2)
    w1 = torch.exp(l1 - m).unsqueeze(-1)
    w2 = torch.exp(l2 - m).unsqueeze(-1)
    return ((o1.float() * w1 + o2.float() * w2) / (w1 + w2)).to(o1.dtype)


class Model:
    def __init__(self, seed=0):
        g = torch.Generator(device="cuda").manual_seed(seed)

        def w(rows, cols):
            return (torch.randn(rows, cols, device="cuda", generator=g) / math.sqrt(cols)).to(
                torch.bfloat16)

        self.embed = w(V, D)
        self.layers = []
        for _ in range(L):
            self.layers.append(dict(
                attn_norm=torch.ones(D, device="cuda", dtype=torch.bfloat16),
                wqkv=w((HQ + 2 * HKV) * HD, D),
                wo=w(D, HQ * HD),
                mlp_norm=torch.ones(D, device="cuda", dtype=torch.bfloat16),
                wgu=w(2 * I, D),
                wd=w(D, I)))
        self.norm = torch.ones(D, device="cuda", dtype=torch.bfloat16)
        self.lm_head = w(V, D)
        inv = 1.0 / (THETA ** (torch.arange(0, HD, 2, device="cuda").float() / HD))
        self.inv_freq = inv
        self.weight_bytes = sum(t.numel() * 2 for layer in self.layers
                                for t in layer.values()) + self.lm_head.numel() * 2


def rms_norm(x, weight, eps=1e-5):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight


def rope(x, pos, inv_freq):
    # x [B, H, 1, d]; pos [B] int
    ang = pos.float().unsqueeze(-1) * inv_freq  # [B, d/2]
    cos = torch.cos(ang)[:, None, None, :].to(x.dtype)
    sin = torch.sin(ang)[:, None, None, :].to(x.dtype)
    x1, x2 = x[..., : HD // 2], x[..., HD // 2:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def make_step(model, ctx_k, ctx_v, dyn_k, dyn_v, B, cascade):
    """The decode step of B sequences: tokens [B] -> next tokens [B]. ctx_k/v [L][K, HKV, S, d]:
    K shared contexts, in blocks: sequences
    [k * B / K, (k + 1) * B / K) share context k; dyn_k/v [L][B, HKV, DYN, d] each sequence's own
    rows (the last slot is written with the new token's K/V every step)."""
    scale = 1.0 / math.sqrt(HD)
    K, S = ctx_k[0].shape[0], ctx_k[0].shape[2]
    per = B // K
    dyn = dyn_k[0].shape[2]

    def step(tokens, pos):
        x = model.embed[tokens]  # [B, D]
        for l, layer in enumerate(model.layers):
            h = rms_norm(x, layer["attn_norm"])
            qkv = h @ layer["wqkv"].t()
            q = qkv[:, : HQ * HD].view(B, HQ, 1, HD)
            k = qkv[:, HQ * HD: (HQ + HKV) * HD].view(B, HKV, 1, HD)
            v = qkv[:, (HQ + HKV) * HD:].view(B, HKV, 1, HD)
            q = rope(q, pos, model.inv_freq)
            k = rope(k, pos, model.inv_freq)
            dyn_k[l][:, :, dyn - 1: dyn] = k
            dyn_v[l][:, :, dyn - 1: dyn] = v
            # The G query heads of a KV group as G query rows of that KV head.
            qg = q.view(B, HKV, G, HD)
            o_dyn, l_dyn = flash_with_lse(qg, dyn_k[l], dyn_v[l], scale)  # [B, HKV, G, d]
            if cascade:
                # Context k's sequences stacked as rows: [K, HKV, per * G, d].
                qs = qg.view(K, per, HKV, G, HD).permute(0, 2, 1, 3, 4).reshape(K, HKV, per * G, HD)
                o_ctx, l_ctx = flash_with_lse(qs, ctx_k[l], ctx_v[l], scale)
                o_ctx = o_ctx.reshape(K, HKV, per, G, HD).permute(0, 2, 1, 3, 4).reshape(B, HKV, G, HD)
                l_ctx = l_ctx.reshape(K, HKV, per, G).permute(0, 2, 1, 3).reshape(B, HKV, G)
            else:  # each sequence reads its context on its own (context k's block at a time)
                parts = [flash_with_lse(qg[k * per:(k + 1) * per],
                                        ctx_k[l][k:k + 1].expand(per, HKV, S, HD),
                                        ctx_v[l][k:k + 1].expand(per, HKV, S, HD), scale)
                         for k in range(K)]
                o_ctx = torch.cat([p[0] for p in parts]) if K > 1 else parts[0][0]
                l_ctx = torch.cat([p[1] for p in parts]) if K > 1 else parts[0][1]
            att = merge(o_ctx, l_ctx, o_dyn, l_dyn).reshape(B, HQ * HD)
            x = x + att @ layer["wo"].t()
            h = rms_norm(x, layer["mlp_norm"])
            gu = h @ layer["wgu"].t()
            x = x + (F.silu(gu[:, :I]) * gu[:, I:]) @ layer["wd"].t()
        logits = rms_norm(x, model.norm) @ model.lm_head.t()
        return torch.argmax(logits, dim=-1)

    return step


def time_graph(step, B, S):
    tokens = torch.randint(0, V, (B,), device="cuda")
    pos = torch.full((B,), S + 10, device="cuda", dtype=torch.int64)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            out = step(tokens, pos)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step(tokens, pos)
    del out
    results = []
    for _ in range(3):
        for _ in range(5):
            graph.replay()
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        for _ in range(20):
            graph.replay()
        e1.record()
        e1.synchronize()
        results.append(e0.elapsed_time(e1) / 20)
    results.sort()
    return results[1]


def rope_rows(x, pos, inv_freq):
    """x [1, H, C, d]; pos [C] int: RoPE of C consecutive positions."""
    ang = pos.float().unsqueeze(-1) * inv_freq  # [C, d/2]
    cos = torch.cos(ang)[None, None].to(x.dtype)
    sin = torch.sin(ang)[None, None].to(x.dtype)
    x1, x2 = x[..., : HD // 2], x[..., HD // 2:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def cudnn_with_lse(q, k, v, causal, scale):
    """aten cuDNN attention with its natural-log lse [1, H, Lq] (q, k, v with equal heads)."""
    out = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, causal,
                                                             False, scale=scale)
    return out[0], out[1].float().reshape(q.shape[0], q.shape[1], q.shape[2])


EXACT = {"ok": True}


def chunk_attention(q, kc, vc, p0, scale):
    """q [1, HQ, C, d] at positions p0 .. p0 + C - 1 against cache rows [0, p0 + C)."""
    C = q.shape[2]
    own_k, own_v = kc[:, :, p0:p0 + C], vc[:, :, p0:p0 + C]
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        if p0 == 0:
            return F.scaled_dot_product_attention(q, own_k, own_v, is_causal=True,
                                                  enable_gqa=True, scale=scale)
        if EXACT["ok"]:
            try:
                qs = q.contiguous().view(1, HKV, G * C, HD)
                o1, l1 = cudnn_with_lse(qs, kc[:, :, :p0], vc[:, :, :p0], False, scale)
                o2, l2 = cudnn_with_lse(q, own_k.repeat_interleave(G, dim=1),
                                        own_v.repeat_interleave(G, dim=1), True, scale)
                return merge(o1.view(1, HQ, C, HD), l1.view(1, HQ, C), o2, l2)
            except (RuntimeError, TypeError, AttributeError) as e:
                EXACT["ok"] = False
                print(f"aten cuDNN attention with lse unavailable ({str(e).splitlines()[0][:90]}):"
                      " chunks attend to all their keys without the causal mask")
        return F.scaled_dot_product_attention(q, kc[:, :, :p0 + C], vc[:, :, :p0 + C],
                                              enable_gqa=True, scale=scale)


def prefill_chunk(model, kc, vc, tokens, p0):
    """One chunk of C tokens at positions p0..: fills the caches, returns the last logits."""
    scale = 1.0 / math.sqrt(HD)
    C = tokens.shape[0]
    pos = torch.arange(p0, p0 + C, device="cuda")
    x = model.embed[tokens]  # [C, D]
    for l, layer in enumerate(model.layers):
        h = rms_norm(x, layer["attn_norm"])
        qkv = h @ layer["wqkv"].t()
        q = qkv[:, : HQ * HD].view(C, HQ, HD).transpose(0, 1).unsqueeze(0)
        k = qkv[:, HQ * HD: (HQ + HKV) * HD].view(C, HKV, HD).transpose(0, 1).unsqueeze(0)
        v = qkv[:, (HQ + HKV) * HD:].view(C, HKV, HD).transpose(0, 1).unsqueeze(0)
        kc[l][:, :, p0:p0 + C] = rope_rows(k, pos, model.inv_freq)
        vc[l][:, :, p0:p0 + C] = v
        att = chunk_attention(rope_rows(q, pos, model.inv_freq), kc[l], vc[l], p0, scale)
        x = x + att[0].transpose(0, 1).reshape(C, HQ * HD) @ layer["wo"].t()
        h = rms_norm(x, layer["mlp_norm"])
        gu = h @ layer["wgu"].t()
        x = x + (F.silu(gu[:, :I]) * gu[:, I:]) @ layer["wd"].t()
    return rms_norm(x[-1:], model.norm) @ model.lm_head.t()


def run_prefill(args):
    N, C = args.prefill, args.chunk
    queries = [int(n) for n in args.query_tokens.split(",") if n]
    dev = torch.cuda.get_device_name()
    print(f"device: {dev}; torch {torch.__version__}; prefill {N} tokens in chunks of {C}, "
          f"inputs {queries} against it; attention on cuDNN")
    model = Model()
    cap = N + max(queries + [0])
    kc = [torch.empty(1, HKV, cap, HD, device="cuda", dtype=torch.bfloat16) for _ in range(L)]
    vc = [torch.empty(1, HKV, cap, HD, device="cuda", dtype=torch.bfloat16) for _ in range(L)]
    tokens = torch.randint(0, V, (cap,), device="cuda")

    def prefill(n):
        for p0 in range(0, n, C):
            logits = prefill_chunk(model, kc, vc, tokens[p0:min(n, p0 + C)], p0)
        return logits

    prefill(min(N, 2 * C))  # warm-up (cuDNN plans, cuBLAS)
    torch.cuda.synchronize()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    prefill(N)
    e1.record()
    e1.synchronize()
    sec = e0.elapsed_time(e1) * 1e-3
    rows = [dict(what="prefill", tokens=N, seconds=sec, exact=EXACT["ok"], device=dev)]
    print(f"prefill {N} tokens: {sec:.2f} s, {N / sec:,.0f} tokens/s"
          f"{'' if EXACT['ok'] else ' (no causal mask inside chunks)'}", flush=True)
    for n in queries:
        times = []
        for _ in range(4):
            e0.record()
            prefill_chunk(model, kc, vc, tokens[N:N + n], N)
            e1.record()
            e1.synchronize()
            times.append(e0.elapsed_time(e1))
        ms = sorted(times[1:])[1]
        rows.append(dict(what="input", tokens=n, context=N, ms=ms, exact=EXACT["ok"], device=dev))
        print(f"input of {n} tokens against {N}: time to first token {ms:.1f} ms", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--context", type=int, default=131072, help="shared context tokens S")
    ap.add_argument("--contexts", type=int, default=1,
                    help="K contexts of S tokens; the batch's sequences split evenly over them")
    ap.add_argument("--dyn", type=int, default=256, help="own rows per sequence")
    ap.add_argument("--batches", default="1,8,32,64")
    ap.add_argument("--variants", default="per-sequence,cascade")
    ap.add_argument("--json", default="")
    ap.add_argument("--prefill", type=int, default=0,
                    help="prefill this many tokens and time inputs against them (see above)")
    ap.add_argument("--chunk", type=int, default=8192)
    ap.add_argument("--query_tokens", default="1024,4096")
    args = ap.parse_args()
    torch.manual_seed(0)
    if args.prefill:
        run_prefill(args)
        return
    dev = torch.cuda.get_device_name()
    bw = copy_bandwidth()
    print(f"device: {dev}; copy {bw / 1e9:.0f} GB/s (read + write); torch {torch.__version__}; "
          f"{args.contexts} context(s) of {args.context} tokens, {args.dyn} own rows per sequence")
    model = Model()
    S, K = args.context, args.contexts
    ctx_k = [torch.randn(K, HKV, S, HD, device="cuda", dtype=torch.bfloat16) for _ in range(L)]
    ctx_v = [torch.randn(K, HKV, S, HD, device="cuda", dtype=torch.bfloat16) for _ in range(L)]
    ctx_bytes = 2 * L * HKV * S * HD * 2  # one context
    rows = []
    for B in [int(b) for b in args.batches.split(",") if b]:
        if B % K != 0:
            print(f"B={B}: not a multiple of {K} contexts, skipped")
            continue
        dyn_k = [torch.randn(B, HKV, args.dyn, HD, device="cuda", dtype=torch.bfloat16)
                 for _ in range(L)]
        dyn_v = [torch.randn(B, HKV, args.dyn, HD, device="cuda", dtype=torch.bfloat16)
                 for _ in range(L)]
        dyn_bytes = 2 * L * HKV * args.dyn * HD * 2 * B
        for variant in args.variants.split(","):
            cascade = variant == "cascade"
            if cascade and B == 1:
                continue  # the same work as per-sequence
            try:
                ms = time_graph(make_step(model, ctx_k, ctx_v, dyn_k, dyn_v, B, cascade), B, S)
            except torch.cuda.OutOfMemoryError as e:
                print(f"B={B} {variant}: out of memory ({e})")
                torch.cuda.empty_cache()
                continue
            reads = model.weight_bytes + (K if cascade else B) * ctx_bytes + dyn_bytes
            floor_ms = reads / bw * 1e3
            rows.append(dict(batch=B, variant=variant, ms=ms, floor_ms=floor_ms, context=S,
                             contexts=K, device=dev))
            print(f"B={B:3d} {variant:13s} {ms:8.3f} ms/step  floor {floor_ms:7.3f} ms "
                  f"({ms / floor_ms:.2f}x)  {B / ms * 1e3:8.1f} tokens/s")
            sys.stdout.flush()
        del dyn_k, dyn_v
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
