#!/usr/bin/python3
"""An independent NumPy forward of the model families Squeeze serves, for checking the C++ one.

    /usr/bin/python3 tools/reference_forward.py --model DIR --tokens 3,1,4,1,5 [--positions 2,4]

Reads DIR/config.json and DIR/*.safetensors (F32, BF16, F16) and prints JSON
{"positions": [...], "logits": [[V floats] per position]} for one causal forward over the tokens
(default: the last position). Needs only NumPy (Debian python3-numpy).

Written from the Hugging Face transformers model definitions, not from the C++ code:
  LlamaForCausalLM, MistralForCausalLM  RMSNorm, q/k/v/o projections (biases when
                                        `attention_bias`), RoPE rotate_half, GQA, SwiGLU MLP
  Qwen2ForCausalLM                      + q/k/v biases
  Qwen3ForCausalLM                      + per-head RMSNorm of q and k before RoPE
  Phi3ForCausalLM                       fused qkv_proj and gate_up_proj (gate rows first)
RoPE (modeling_rope_utils): default, linear, llama3, yarn (correction range, ramp, attention
factor from mscale / mscale_all_dim or 0.1 ln(factor) + 1), longrope (short factors while the
sequence fits original_max_position_embeddings, long factors beyond, attention factor
sqrt(1 + ln(factor) / ln(original)) with factor = max_position_embeddings / original). The RoPE
tables are computed in float32 as transformers does; everything else runs in float64.
"""

import argparse
import glob
import json
import math
import os
import struct
import sys

import numpy as np


def read_safetensors(path):
    """name -> float64 array."""
    with open(path, "rb") as f:
        data = f.read()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len])
    base = 8 + header_len
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        raw = data[base + begin:base + end]
        dtype = info["dtype"]
        if dtype == "F32":
            arr = np.frombuffer(raw, dtype="<f4")
        elif dtype == "F16":
            arr = np.frombuffer(raw, dtype="<f2")
        elif dtype == "BF16":
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            arr = bits.view(np.float32)
        else:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {dtype}")
        out[name] = arr.astype(np.float64).reshape(info["shape"])
    return out


def rope_params(cfg):
    """(theta, scaling dict or None) from either config layout."""
    theta = cfg.get("rope_theta", 10000.0)
    params = cfg.get("rope_parameters")
    if params:
        theta = params.get("rope_theta", theta)
        scaling = dict(params)
    else:
        scaling = dict(cfg["rope_scaling"]) if cfg.get("rope_scaling") else {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    return theta, kind, scaling


def rope_tables(cfg, head_dim, seq_len):
    """(inv_freq float32 [d/2], attention_factor) as transformers computes them."""
    theta, kind, s = rope_params(cfg)
    exponent = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    pos_freqs = np.power(np.float32(theta), exponent).astype(np.float32)
    inv = (np.float32(1.0) / pos_freqs).astype(np.float32)
    attention = 1.0
    if kind == "default":
        pass
    elif kind == "linear":
        inv = (inv / np.float32(s["factor"])).astype(np.float32)
    elif kind == "llama3":
        factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
        orig = s["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        smooth = (orig / wavelen - low) / (high - low)
        mid = (1 - smooth) * inv / factor + smooth * inv
        inv = np.where(wavelen > orig / low, inv / factor,
                       np.where(wavelen < orig / high, inv, mid)).astype(np.float32)
    elif kind == "yarn":
        factor = s["factor"]
        orig = s.get("original_max_position_embeddings") or cfg["max_position_embeddings"]
        mscale, mscale_all_dim = s.get("mscale"), s.get("mscale_all_dim")

        def get_mscale(scale, m=1.0):
            return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

        attention = s.get("attention_factor")
        if attention is None:
            if mscale and mscale_all_dim:
                attention = get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim)
            else:
                attention = get_mscale(factor)
        beta_fast = s.get("beta_fast") or 32
        beta_slow = s.get("beta_slow") or 1

        def correction_dim(rotations):
            return (head_dim * math.log(orig / (rotations * 2 * math.pi))) / (2 * math.log(theta))

        low, high = correction_dim(beta_fast), correction_dim(beta_slow)
        if s.get("truncate", True):
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, head_dim - 1)
        if low == high:
            high += 0.001
        ramp = np.clip((np.arange(head_dim // 2, dtype=np.float32) - np.float32(low))
                       / np.float32(high - low), 0, 1).astype(np.float32)
        extrapolation_weight = np.float32(1) - ramp
        interpolation = (np.float32(1) / (np.float32(factor) * pos_freqs)).astype(np.float32)
        inv = (interpolation * (np.float32(1) - extrapolation_weight)
               + inv * extrapolation_weight).astype(np.float32)
    elif kind == "longrope":
        orig = s.get("original_max_position_embeddings",
                     cfg.get("original_max_position_embeddings"))
        if orig is not None:
            factor = cfg["max_position_embeddings"] / orig
        else:
            orig = cfg["max_position_embeddings"]
            factor = s.get("factor") or 1.0
        attention = s.get("attention_factor")
        if attention is None:
            attention = 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(orig))
        ext = s["long_factor"] if seq_len > orig else s["short_factor"]
        inv = (np.float32(1) / (np.asarray(ext, dtype=np.float32) * pos_freqs)).astype(np.float32)
    else:
        raise ValueError(f"unknown rope type {kind}")
    return inv, float(attention)


def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope(x, cos, sin):
    """x [T, H, d]; cos/sin [T, d] (already duplicated halves)."""
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]


def forward(model_dir, tokens):
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    arch = cfg["architectures"][0]
    w = {}
    for path in sorted(glob.glob(os.path.join(model_dir, "*.safetensors"))):
        w.update(read_safetensors(path))
    D, L = cfg["hidden_size"], cfg["num_hidden_layers"]
    Hq = cfg["num_attention_heads"]
    Hkv = cfg.get("num_key_value_heads") or Hq
    d = cfg.get("head_dim") or D // Hq
    I = cfg["intermediate_size"]
    eps = cfg.get("rms_norm_eps", 1e-6)
    G = Hq // Hkv
    T = len(tokens)
    qkv_bias = arch == "Qwen2ForCausalLM" or (
        arch in ("LlamaForCausalLM", "Qwen3ForCausalLM") and cfg.get("attention_bias", False))
    o_bias = arch in ("LlamaForCausalLM", "Qwen3ForCausalLM") and cfg.get("attention_bias", False)

    inv_freq, attention_factor = rope_tables(cfg, d, T)
    angles = np.arange(T, dtype=np.float32)[:, None] * inv_freq[None, :]  # fp32, [T, d/2]
    emb = np.concatenate([angles, angles], axis=-1)
    cos = (np.cos(emb).astype(np.float32) * np.float32(attention_factor)).astype(np.float64)
    sin = (np.sin(emb).astype(np.float32) * np.float32(attention_factor)).astype(np.float64)

    x = w["model.embed_tokens.weight"][np.asarray(tokens)]
    mask = np.triu(np.full((T, T), -np.inf), k=1)
    for layer in range(L):
        p = f"model.layers.{layer}."
        h = rms_norm(x, w[p + "input_layernorm.weight"], eps)
        if arch == "Phi3ForCausalLM":
            qkv = h @ w[p + "self_attn.qkv_proj.weight"].T
            q, k, v = np.split(qkv, [Hq * d, Hq * d + Hkv * d], axis=-1)
        else:
            q = h @ w[p + "self_attn.q_proj.weight"].T
            k = h @ w[p + "self_attn.k_proj.weight"].T
            v = h @ w[p + "self_attn.v_proj.weight"].T
        if qkv_bias:
            q = q + w[p + "self_attn.q_proj.bias"]
            k = k + w[p + "self_attn.k_proj.bias"]
            v = v + w[p + "self_attn.v_proj.bias"]
        q, k, v = q.reshape(T, Hq, d), k.reshape(T, Hkv, d), v.reshape(T, Hkv, d)
        if arch == "Qwen3ForCausalLM":
            q = rms_norm(q, w[p + "self_attn.q_norm.weight"], eps)
            k = rms_norm(k, w[p + "self_attn.k_norm.weight"], eps)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        out = np.empty((T, Hq, d))
        for head in range(Hq):
            kh, vh = k[:, head // G, :], v[:, head // G, :]
            scores = q[:, head, :] @ kh.T / math.sqrt(d) + mask
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            out[:, head, :] = (scores / scores.sum(axis=-1, keepdims=True)) @ vh
        att = out.reshape(T, Hq * d) @ w[p + "self_attn.o_proj.weight"].T
        if o_bias:
            att = att + w[p + "self_attn.o_proj.bias"]
        x = x + att
        h = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        if arch == "Phi3ForCausalLM":
            gate, up = np.split(h @ w[p + "mlp.gate_up_proj.weight"].T, 2, axis=-1)
        else:
            gate = h @ w[p + "mlp.gate_proj.weight"].T
            up = h @ w[p + "mlp.up_proj.weight"].T
        assert gate.shape[-1] == I
        x = x + (gate / (1 + np.exp(-gate)) * up) @ w[p + "mlp.down_proj.weight"].T
    x = rms_norm(x, w["model.norm.weight"], eps)
    head = (w["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings", False)
            else w["lm_head.weight"])
    return x @ head.T  # [T, V]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="model directory")
    parser.add_argument("--tokens", required=True, help="comma-separated token ids")
    parser.add_argument("--positions", default="", help="comma-separated positions (default: last)")
    args = parser.parse_args()
    tokens = [int(t) for t in args.tokens.split(",")]
    positions = ([int(p) for p in args.positions.split(",")] if args.positions
                 else [len(tokens) - 1])
    logits = forward(args.model, tokens)
    json.dump({"positions": positions, "logits": [logits[p].tolist() for p in positions]},
              sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
