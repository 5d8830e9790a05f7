#!/usr/bin/env python3
"""Golden files for the Hugging Face conformance tests (tests/cpu/hf_conformance_test.cc).

Regenerate (needs torch, transformers, tokenizers, sentencepiece, safetensors; no network, no GPU
needed, about a minute on CPU):

    python3 tools/make_goldens.py --out tests/data/golden

Only some parts (the rest of an existing manifest.json in --out is kept):

    python3 tools/make_goldens.py --out tests/data/golden --only qwen2_yarn,qwen3_yarn
    python3 tools/make_goldens.py --out tests/data/golden --only bpe_qwen2,bpe_tekken
    /usr/bin/python3 tools/make_goldens.py --out /tmp/g --only splits,nfc   # then copy the
        # tokenizers/splits_*.json and nfc_cases.json it writes (needs only the `regex` module)

or into a fresh folder next to a copy of the committed manifest (--manifest-from), e.g. the
model families added for issue 18:

    python3 tools/make_goldens.py --out $OUT/golden --only families \
        --manifest-from tests/data/golden/manifest.json

What it writes (under --out; each part is rebuilt from scratch, nothing else is touched):

  <model>/config.json, model.safetensors, golden.json
      A small random-weight LlamaForCausalLM / MistralForCausalLM / Qwen2ForCausalLM /
      Qwen3ForCausalLM / Phi3ForCausalLM built and saved by transformers itself (save_pretrained,
      safetensors). golden.json holds, for fixed token sequences of
      several lengths (one over 2048), the fp32 logits of the last 4 positions, and for every
      position the argmax, the runner-up, the max logit and the top-2 gap; plus 16 greedy tokens
      from a prompt; plus the RoPE inverse frequencies and attention factor transformers used. Goldens are computed from the model *reloaded from disk* in float32 with
      eager attention on CPU, so they describe exactly the saved files (bf16/fp16 weights upcast
      to fp32, the config as rewritten below).
  tokenizers/sp.model, sp_cases.json
      A SentencePiece BPE model (byte_fallback) trained here, and the ids `sentencepiece` gives
      for every string of the conformance corpus, with its decode of those ids.
  tokenizers/bpe/tokenizer.json, bpe_cases.json
      A Llama-3-style byte-level BPE tokenizer.json trained with `tokenizers` (Split with the
      Llama-3 regex + ByteLevel, ignore_merges, special and added tokens), the ids `tokenizers`
      gives for every corpus string (no special tokens added), its decode, and the Split
      pre-tokenizer's pieces.
  tokenizers/bpe_legacy/tokenizer.json, bpe_legacy_cases.json
      The same vocabulary written the older way: merges as "a b" strings, no ignore_merges.
  tokenizers/bpe_qwen2/tokenizer.json, bpe_qwen2_cases.json
  tokenizers/bpe_tekken/tokenizer.json, bpe_tekken_cases.json
      Byte-level BPE tokenizer.json files in the Qwen2/2.5/3 layout (NFC normalizer, Split with
      the Qwen2 regex, "a b" merges) and the Mistral-Nemo layout (Split with the Tekken regex,
      ignore_merges, <s> BOS), trained with `tokenizers`, with the ids and decodes it gives for
      every corpus string and a few more (BPE_FAMILY_EXTRA); the run also checks the Split pieces
      against splits_*.json and the NFC normalizer against Python's unicodedata.
  tokenizers/splits_qwen2.json, splits_tekken.json        (--only splits; no `tokenizers`)
      The pieces the Qwen2 and Tekken Split regexes cut every corpus string (and SPLIT_EXTRA)
      into, computed with the `regex` module (Debian's python3-regex: run with /usr/bin/python3),
      which first must give `tokenizers`' own Llama-3 pieces of bpe_cases.json exactly.
  tokenizers/nfc_cases.json                                (--only nfc; no `tokenizers`)
      unicodedata.normalize("NFC") of targeted strings (every code point with a canonical
      decomposition, its NFD, Hangul, reordering, blocking, exclusions, singletons, random mark
      soups) and of the corpus strings it changes.
  tokenizers/corpus.json
      The conformance corpus (>= 2000 strings), generated deterministically below.
  manifest.json
      What was generated, with library versions; the tests read it first.

Config layouts: transformers 5 saves RoPE settings as `rope_parameters`; published checkpoints
(transformers 4) write `rope_theta` and `rope_scaling` at the top level. llama2, longchat,
llama31 and qwen2_yarn are rewritten to the transformers-4 layout after saving (exactly as on the
Hub), the others keep the transformers-5 layout. After reloading, the RoPE inverse frequencies
transformers uses are checked against the formula for the intended settings, so a layout that
transformers read differently than intended stops the script instead of producing wrong goldens.
"""

import argparse
import copy
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
import traceback
import unicodedata

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

COMMAND = "python3 tools/make_goldens.py --out tests/data/golden"
# --only families: the model families beyond Llama (issue 18).
FAMILIES = ["qwen2_yarn", "qwen3_yarn", "mistral_nemo", "phi3", "phi3_longrope"]
SEQ_LENGTHS = [7, 100, 2100]  # 2100 > 2048 and > llama3 original_max_position_embeddings
N_LAST = 4  # positions per sequence whose full logits are stored
N_GREEDY = 16
PROMPT_LEN = 12

# ---------------------------------------------------------------------------------------------
# Models. Small enough that all weights stay under ~8 MB; shapes chosen to cover MHA, GQA 4:1
# and 2:1, head_dim 64, 128 and 32, tied embeddings, and every RoPE type the engine supports.
# layout: "t4" = rewrite config.json to the transformers-4 layout; "t4_type" = the same with the
# oldest spelling {"type": ...}; "t5" = keep what transformers 5 wrote.
# ---------------------------------------------------------------------------------------------
MODELS = [
    dict(name="llama2", arch="llama", seed=1001, vocab=512, hidden=128, inter=256, layers=2,
         heads=2, kv_heads=2, head_dim=64, theta=10000.0, rope=None, tie=False,
         dtype="float32", layout="t4",
         description="Llama-2 style: MHA, plain RoPE, fp32, transformers-4 config"),
    dict(name="longchat", arch="llama", seed=1002, vocab=512, hidden=128, inter=256, layers=2,
         heads=2, kv_heads=2, head_dim=64, theta=10000.0,
         rope={"rope_type": "linear", "factor": 8.0}, tie=False, dtype="float16",
         layout="t4_type",
         description="LongChat style: MHA, linear RoPE scaling x8, fp16 weights, "
                     "rope_scaling {\"type\": \"linear\"} (transformers 4)"),
    dict(name="llama31", arch="llama", seed=1003, vocab=512, hidden=128, inter=256, layers=2,
         heads=8, kv_heads=2, head_dim=64, theta=500000.0,
         rope={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 256},
         tie=False, dtype="bfloat16", layout="t4",
         description="Llama-3.1 style: GQA 4:1, llama3 RoPE (factor 8, original 256 < tested "
                     "lengths), theta 5e5, bf16 weights, transformers-4 config"),
    dict(name="mistral", arch="mistral", seed=1004, vocab=512, hidden=128, inter=256, layers=2,
         heads=4, kv_heads=2, head_dim=128, theta=1000000.0, rope=None, tie=False,
         dtype="bfloat16", layout="t5", sliding_window=4096,
         description="Mistral style: GQA 2:1, head_dim 128, theta 1e6, sliding_window 4096 "
                     "(longer than every tested sequence), bf16, transformers-5 config"),
    dict(name="llama32_tied", arch="llama", seed=1005, vocab=512, hidden=128, inter=256,
         layers=2, heads=4, kv_heads=1, head_dim=32, theta=500000.0,
         rope={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 256},
         tie=True, dtype="float32", layout="t5",
         description="Llama-3.2 style: tied embeddings, GQA 4:1, llama3 RoPE factor 32, fp32, "
                     "transformers-5 config (rope_parameters)"),
    # ---- families beyond Llama (FAMILIES). max_position_embeddings is 4096 for all; YaRN's
    # original * factor equals it, so every reading of YaRN's window agrees.
    dict(name="qwen2_yarn", arch="qwen2", seed=1006, vocab=512, hidden=192, inter=256, layers=2,
         heads=3, kv_heads=1, head_dim=64, theta=1000000.0,
         rope={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024},
         tie=True, dtype="bfloat16", layout="t4_type",
         description="Qwen2.5 style: q/k/v biases, GQA 3:1, head_dim 64, YaRN x4 over an "
                     "original 1024 (the README's {\"type\": \"yarn\"} spelling, transformers-4 "
                     "config), theta 1e6, tied embeddings, bf16"),
    dict(name="qwen3_yarn", arch="qwen3", seed=1007, vocab=512, hidden=128, inter=256, layers=2,
         heads=4, kv_heads=2, head_dim=128, theta=1000000.0,
         rope={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024},
         tie=False, dtype="bfloat16", layout="t5",
         description="Qwen3 style: per-head q/k RMSNorm, head_dim 128 with hidden 128 and 4 "
                     "heads, GQA 2:1, YaRN x4 (attention factor folded into the norms), bf16, "
                     "transformers-5 config"),
    dict(name="mistral_nemo", arch="mistral", seed=1008, vocab=512, hidden=128, inter=256,
         layers=2, heads=5, kv_heads=1, head_dim=128, theta=1000000.0, rope=None, tie=False,
         dtype="bfloat16", layout="t5", sliding_window=None,
         description="Mistral-Nemo style: explicit head_dim 128 with hidden 128 and 5 heads, GQA "
                     "5:1, theta 1e6, no sliding window, bf16, transformers-5 config"),
    dict(name="phi3", arch="phi3", seed=1009, vocab=512, hidden=192, inter=128, layers=2,
         heads=2, kv_heads=2, head_dim=96, theta=10000.0,
         rope={"rope_type": "longrope", "original_max_position_embeddings": 4096,
               "short_factor": [round(1.0 + 0.1 * (i / 47) ** 2, 6) for i in range(48)],
               "long_factor": [round(1.0 + 39.0 * (i / 47) ** 2, 6) for i in range(48)]},
         tie=False, dtype="bfloat16", layout="t5",
         description="Phi-3 style: fused qkv_proj and gate_up_proj, MHA, head_dim 96, LongRoPE "
                     "within its pre-training length (4096 = max_position_embeddings: short "
                     "factors, attention factor 1), bf16, transformers-5 config"),
    dict(name="phi3_longrope", arch="phi3", seed=1010, vocab=512, hidden=192, inter=128,
         layers=2, heads=2, kv_heads=1, head_dim=96, theta=10000.0,
         rope={"rope_type": "longrope", "original_max_position_embeddings": 64,
               "short_factor": [round(1.0 + 0.1 * (i / 47) ** 2, 6) for i in range(48)],
               "long_factor": [round(1.0 + 39.0 * (i / 47) ** 2, 6) for i in range(48)]},
         tie=False, dtype="bfloat16", layout="t5",
         seq_lengths=[100, 2100], prompt_len=80,
         description="Phi-3.5 style: fused weights, GQA 2:1, head_dim 96, LongRoPE served beyond "
                     "its pre-training length 64 (long factors, attention factor "
                     "sqrt(1 + ln 64 / ln 64)); every sequence and greedy prompt is longer than "
                     "64, where transformers switches to the long factors too"),
]

# transformers classes per spec["arch"]: (config class, model class).
ARCH_CLASSES = {"llama": ("LlamaConfig", "LlamaForCausalLM"),
                "mistral": ("MistralConfig", "MistralForCausalLM"),
                "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
                "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
                "phi3": ("Phi3Config", "Phi3ForCausalLM")}

# The Llama-3 pre-tokenization regex, as in Meta's tokenizer.json.
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# The Split regexes of the other byte-level BPE families (issue 18), as in their tokenizer.json:
# Qwen2/2.5/3 (transformers' Qwen2Tokenizer PRETOKENIZE_REGEX: Llama-3's with single digits) and
# Mistral-Nemo's Tekken (llama.cpp's "original regex from tokenizer.json" for
# Mistral-Nemo-Base-2407; transformers' fix_mistral_regex writes the same).
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
TEKKEN_PATTERN = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*"
                  r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"
                  r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+"
                  r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|"
                  r"\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
SPLIT_PATTERNS = {"qwen2": QWEN2_PATTERN, "tekken": TEKKEN_PATTERN}
BPE_SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>"]
BPE_MORE_SPECIAL = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
BPE_ADDED = [("<think>", False), ("squeezed attention", True)]  # (content, normalized)


def log(msg):
    print(f"[make_goldens {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def r7(x):
    """Rounds to 7 significant digits (relative error <= 5e-8, far below the 1e-3 tolerance)."""
    return float(f"{float(x):.7g}")


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        # ensure_ascii: pure-ASCII files, every control character and astral code point escaped.
        json.dump(obj, f, ensure_ascii=True, separators=(",", ":"))
        f.write("\n")


# =============================================================================================
# Models
# =============================================================================================

def expected_inv_freq(torch, head_dim, theta, rope, long=False):
    """The RoPE inverse frequencies transformers should use, computed independently (fp64).
    LongRoPE: the short factors (what the model starts with), the long ones with `long`."""
    inv = [1.0 / (theta ** (2 * i / head_dim)) for i in range(head_dim // 2)]
    if rope is None:
        return torch.tensor(inv, dtype=torch.float64)
    if rope["rope_type"] == "linear":
        return torch.tensor([f / rope["factor"] for f in inv], dtype=torch.float64)
    if rope["rope_type"] == "longrope":
        ext = rope["long_factor"] if long else rope["short_factor"]
        return torch.tensor([f / e for f, e in zip(inv, ext)], dtype=torch.float64)
    if rope["rope_type"] == "yarn":
        factor, orig = rope["factor"], rope["original_max_position_embeddings"]

        def correction_dim(rotations):
            return head_dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(theta))

        low = max(math.floor(correction_dim(32)), 0)
        high = min(math.ceil(correction_dim(1)), head_dim - 1)
        out = []
        for i, f in enumerate(inv):
            ramp = min(max((i - low) / (high - low), 0.0), 1.0)
            out.append(f / factor * ramp + f * (1 - ramp))
        return torch.tensor(out, dtype=torch.float64)
    assert rope["rope_type"] == "llama3"
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    orig = rope["original_max_position_embeddings"]
    out = []
    for f in inv:
        wavelen = 2 * math.pi / f
        if wavelen < orig / high:
            out.append(f)
        elif wavelen > orig / low:
            out.append(f / factor)
        else:
            smooth = (orig / wavelen - low) / (high - low)
            out.append((1 - smooth) * f / factor + smooth * f)
    return torch.tensor(out, dtype=torch.float64)


def expected_attention_factor(spec):
    """The factor transformers multiplies cos and sin by (attention_scaling)."""
    rope = spec["rope"]
    if rope is None or rope["rope_type"] not in ("yarn", "longrope"):
        return 1.0
    if rope["rope_type"] == "yarn":
        return 0.1 * math.log(rope["factor"]) + 1.0
    factor = 4096 / rope["original_max_position_embeddings"]  # max_position_embeddings / original
    if factor <= 1:
        return 1.0
    return math.sqrt(1 + math.log(factor) / math.log(rope["original_max_position_embeddings"]))


def find_rotary(model):
    for name, module in model.named_modules():
        if name.endswith("rotary_emb") and hasattr(module, "inv_freq"):
            return module
    return None


def make_config(transformers, spec):
    """A transformers config for `spec`, RoPE given in the transformers-5 way (rope_parameters),
    falling back to the transformers-4 keywords on versions without it."""
    import inspect
    cls = getattr(transformers, ARCH_CLASSES[spec["arch"]][0])
    fields = set()
    try:
        fields = set(inspect.signature(cls.__init__).parameters)
    except (TypeError, ValueError):
        pass
    if hasattr(cls, "__dataclass_fields__"):
        fields |= set(cls.__dataclass_fields__)
    kw = dict(vocab_size=spec["vocab"], hidden_size=spec["hidden"],
              intermediate_size=spec["inter"], num_hidden_layers=spec["layers"],
              num_attention_heads=spec["heads"], num_key_value_heads=spec["kv_heads"],
              max_position_embeddings=4096, rms_norm_eps=1e-5,
              tie_word_embeddings=spec["tie"], bos_token_id=1, eos_token_id=2,
              hidden_act="silu")
    if spec["head_dim"] * spec["heads"] != spec["hidden"] or "head_dim" in fields:
        kw["head_dim"] = spec["head_dim"]  # Qwen2 / Phi-3 derive it from hidden / heads
    if spec["arch"] in ("mistral", "phi3"):
        kw["sliding_window"] = spec.get("sliding_window")
    if spec["arch"] == "phi3":
        kw["pad_token_id"] = None  # Phi3Config's default (32000) lies past a small vocabulary
    if spec["arch"] in ("qwen2", "qwen3"):
        kw["use_sliding_window"] = False
    rope = copy.deepcopy(spec["rope"])
    if rope is not None and rope["rope_type"] == "longrope" and (
            "original_max_position_embeddings" in fields):
        # Phi-3 configs carry the pre-training length at the top level.
        kw["original_max_position_embeddings"] = rope["original_max_position_embeddings"]
    rope_params = {"rope_type": "default", "rope_theta": spec["theta"]}
    if rope is not None:
        rope_params.update(rope)
    if "rope_parameters" in fields:
        kw["rope_parameters"] = rope_params
    else:
        kw["rope_theta"] = spec["theta"]
        if rope is not None and rope["rope_type"] == "longrope":
            rope.pop("original_max_position_embeddings", None)
        kw["rope_scaling"] = rope
    return cls(**kw)


def init_weights(torch, model, seed):
    """Deterministic weights with O(1) activations and logits (the transformers default init,
    std 0.02, gives near-uniform logits whose argmax is decided by noise). Norm weights are
    1 + noise so that a loader that ignored them would be caught."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied weights appear once
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if name.endswith(".bias"):  # Qwen2's q/k/v biases
                value = 0.5 * noise
            elif p.dim() == 1:
                value = 1.0 + 0.1 * noise
            elif "embed_tokens" in name:
                value = noise
            else:
                gain = 1.5 if ("q_proj" in name or "k_proj" in name or "qkv_proj" in name) else 1.0
                value = noise * (gain / math.sqrt(p.shape[1]))
            p.copy_(value.to(p.dtype))


def rewrite_config_t4(path, spec):
    """Rewrites config.json the way transformers 4 wrote it (and published repos still have it):
    top-level rope_theta and rope_scaling, no rope_parameters."""
    with open(path, encoding="utf-8") as f:
        cfg = json.load(f)
    cfg.pop("rope_parameters", None)
    cfg["rope_theta"] = spec["theta"]
    if spec["rope"] is None:
        cfg["rope_scaling"] = None
    else:
        scaling = dict(spec["rope"])
        if spec["layout"] == "t4_type":  # LongChat's {"type": "linear", "factor": 8.0}
            scaling["type"] = scaling.pop("rope_type")
        cfg["rope_scaling"] = scaling
    if "dtype" in cfg and "torch_dtype" not in cfg:
        cfg["torch_dtype"] = cfg.pop("dtype")
    cfg["transformers_version"] = "4.44.2"
    with open(path, "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    return cfg


def load_fp32(transformers, model_dir):
    cls = transformers.AutoModelForCausalLM
    import torch
    attempts = [dict(dtype=torch.float32, attn_implementation="eager"),
                dict(torch_dtype=torch.float32, attn_implementation="eager"),
                dict(torch_dtype=torch.float32)]
    last = None
    for kw in attempts:
        try:
            model = cls.from_pretrained(model_dir, local_files_only=True, **kw)
            break
        except TypeError as e:  # an older/newer keyword spelling
            last = e
    else:
        raise last
    return model.float().eval()


def find_inv_freq(model):
    for name, buf in model.named_buffers():
        if name.endswith("inv_freq") and "original" not in name:
            return name, buf
    return None, None


def forward_logits(torch, model, ids):
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=False)
    return out.logits[0].to(torch.float32)  # [T, V]


def build_model(torch, transformers, spec, out_dir):
    name = spec["name"]
    model_dir = os.path.join(out_dir, name)
    if os.path.isdir(model_dir):
        shutil.rmtree(model_dir)
    os.makedirs(model_dir)

    # ---- build and save with transformers ------------------------------------------------
    torch.manual_seed(spec["seed"])
    config = make_config(transformers, spec)
    cls = getattr(transformers, ARCH_CLASSES[spec["arch"]][1])
    model = cls(config).float()
    init_weights(torch, model, spec["seed"])
    if spec["tie"]:
        embed = model.get_input_embeddings().weight
        if model.lm_head.weight.data_ptr() != embed.data_ptr():
            if hasattr(model, "tie_weights"):
                model.tie_weights()
            if model.lm_head.weight.data_ptr() != embed.data_ptr():
                model.lm_head.weight = embed  # share the Parameter, as tying does
    model = model.to(getattr(torch, spec["dtype"])).eval()
    try:
        model.save_pretrained(model_dir, safe_serialization=True)
    except TypeError:  # versions where safetensors is the only format
        model.save_pretrained(model_dir)
    files = sorted(os.listdir(model_dir))
    if not any(f.endswith(".safetensors") for f in files):
        raise RuntimeError(f"{name}: save_pretrained wrote no .safetensors file: {files}")
    config_path = os.path.join(model_dir, "config.json")
    if spec["layout"] in ("t4", "t4_type"):
        rewrite_config_t4(config_path, spec)
    with open(config_path, encoding="utf-8") as f:
        saved_config = json.load(f)
    del model

    # ---- reload exactly what is on disk, in fp32 -----------------------------------------
    model = load_fp32(transformers, model_dir)
    for p in model.parameters():
        if p.dtype != torch.float32:
            raise RuntimeError(f"{name}: reloaded parameter is {p.dtype}, expected float32")
    if spec["tie"] and not torch.equal(model.lm_head.weight, model.get_input_embeddings().weight):
        raise RuntimeError(f"{name}: the reloaded model's lm_head is not tied to embed_tokens")
    buf_name, inv_freq = find_inv_freq(model)
    if inv_freq is None:
        raise RuntimeError(f"{name}: no rotary inv_freq buffer found; cannot verify RoPE")
    want = expected_inv_freq(torch, spec["head_dim"], spec["theta"], spec["rope"])
    got = inv_freq.detach().to(torch.float64).cpu()
    if got.shape != want.shape:
        raise RuntimeError(f"{name}: inv_freq has shape {tuple(got.shape)}, expected "
                           f"{tuple(want.shape)} (head_dim {spec['head_dim']})")
    rel = float(((got - want).abs() / want.abs()).max())
    if rel > 1e-5:
        raise RuntimeError(
            f"{name}: transformers read the RoPE settings differently than intended "
            f"(layout {spec['layout']}): max relative inv_freq error {rel:.3g}\n"
            f"  got  {got.tolist()[:8]}...\n  want {want.tolist()[:8]}...")
    log(f"{name}: RoPE verified ({buf_name}, {got.numel()} frequencies, rel err {rel:.2g})")
    rotary = find_rotary(model)
    want_factor = expected_attention_factor(spec)
    got_factor = float(getattr(rotary, "attention_scaling", 1.0)) if rotary is not None else 1.0
    if abs(got_factor - want_factor) > 1e-6 * want_factor:
        raise RuntimeError(f"{name}: transformers' RoPE attention factor is {got_factor}, "
                           f"expected {want_factor} (layout {spec['layout']})")

    # ---- goldens ----------------------------------------------------------------------------
    rng = random.Random(spec["seed"] * 7919)
    sequences = []
    max_abs_logit = 0.0
    seq_lengths = spec.get("seq_lengths", SEQ_LENGTHS)
    prompt_len = spec.get("prompt_len", PROMPT_LEN)
    for length in seq_lengths:
        ids = [rng.randrange(spec["vocab"]) for _ in range(length)]
        logits = forward_logits(torch, model, ids)
        top = torch.topk(logits, 2, dim=-1)
        max_abs_logit = max(max_abs_logit, float(logits.abs().max()))
        last = logits[-N_LAST:]
        sequences.append({
            "name": f"len{length}",
            "tokens": ids,
            "last_positions": list(range(length - N_LAST, length)),
            "last_logits": [[r7(v) for v in row.tolist()] for row in last],
            "argmax": [int(i) for i in top.indices[:, 0].tolist()],
            "second": [int(i) for i in top.indices[:, 1].tolist()],
            "max_logit": [r7(v) for v in top.values[:, 0].tolist()],
            "top2_gap": [r7(a - b) for a, b in zip(top.values[:, 0].tolist(),
                                                   top.values[:, 1].tolist())],
        })

    # How much RoPE scaling matters here: logits of the longest sequence with the unscaled
    # frequencies, relative to the real ones (a loader that ignored the scaling would be off by
    # about this much).
    # The frequencies transformers used for the longest sequence (LongRoPE switches its buffer to
    # the long factors beyond the pre-training length), recorded for the C++ test.
    ids = sequences[-1]["tokens"]
    real = forward_logits(torch, model, ids)
    _, used_inv_freq = find_inv_freq(model)
    used_inv_freq = [float(f) for f in used_inv_freq.detach().to(torch.float64).cpu().tolist()]
    if spec["rope"] is not None and spec["rope"]["rope_type"] == "longrope":
        long = len(ids) > spec["rope"]["original_max_position_embeddings"]
        want = expected_inv_freq(torch, spec["head_dim"], spec["theta"], spec["rope"], long=long)
        rel = max(abs(a - b) / abs(b) for a, b in zip(used_inv_freq, want.tolist()))
        if rel > 1e-5:
            raise RuntimeError(f"{name}: transformers used other LongRoPE frequencies for "
                               f"len{len(ids)} than the {'long' if long else 'short'} factors "
                               f"(rel err {rel:.3g})")
    scaling_effect = None
    if spec["rope"] is not None:
        # Every inverse-frequency buffer of the rotary module (LongRoPE keeps the short and
        # long sets too) and the attention factor, set to plain RoPE.
        plain_freq = expected_inv_freq(torch, spec["head_dim"], spec["theta"], None)
        saved = {}
        try:
            with torch.no_grad():
                for attr in ("inv_freq", "original_inv_freq", "long_inv_freq"):
                    buf = getattr(rotary, attr, None)
                    if isinstance(buf, torch.Tensor) and buf.shape == plain_freq.shape:
                        saved[attr] = buf.detach().clone()
                        buf.copy_(plain_freq.to(buf.dtype))
                if hasattr(rotary, "attention_scaling"):
                    saved["attention_scaling"] = rotary.attention_scaling
                    rotary.attention_scaling = 1.0
            plain = forward_logits(torch, model, ids)
        finally:
            with torch.no_grad():
                for attr, value in saved.items():
                    if attr == "attention_scaling":
                        rotary.attention_scaling = value
                    else:
                        getattr(rotary, attr).copy_(value)
        scaling_effect = r7(float((plain - real).abs().max() / real.abs().max()))
        log(f"{name}: unscaled RoPE would change the len{len(ids)} logits by "
            f"{scaling_effect:.3g} (relative)")
        if scaling_effect < 1e-2:
            # Not fatal: a transformers version that caches cos/sin ignores the patched buffer.
            log(f"{name}: WARNING: RoPE scaling seems to barely change the logits")

    # Greedy continuation: a manual loop (argmax over full recomputation), with a prompt whose
    # every step has a clear winner so that fp32 rounding cannot flip a token.
    greedy = None
    for attempt in range(50):
        prompt = [rng.randrange(spec["vocab"]) for _ in range(prompt_len)]
        seq = list(prompt)
        gaps = []
        for _ in range(N_GREEDY):
            row = forward_logits(torch, model, seq)[-1]
            top = torch.topk(row, 2)
            gaps.append(float(top.values[0] - top.values[1]))
            seq.append(int(top.indices[0]))
        if min(gaps) >= 1e-3 or attempt == 49:
            greedy = {"prompt": prompt, "tokens": seq[prompt_len:],
                      "min_top2_gap": r7(min(gaps)), "attempt": attempt}
            break

    cfg_expect = {
        "architecture": cls.__name__,
        "vocab_size": spec["vocab"], "hidden_size": spec["hidden"],
        "intermediate_size": spec["inter"], "num_layers": spec["layers"],
        "num_heads": spec["heads"], "num_kv_heads": spec["kv_heads"],
        "head_dim": spec["head_dim"], "tie_word_embeddings": spec["tie"],
        "rope_theta": spec["theta"],
        "rope_type": "default" if spec["rope"] is None else spec["rope"]["rope_type"],
        "rope_factor": 1.0 if spec["rope"] is None else spec["rope"].get(
            "factor", 4096 / spec["rope"].get("original_max_position_embeddings", 4096)),
        # What transformers used (the longest sequence's inverse frequencies).
        "rope_attention_factor": got_factor,
        "rope_inv_freq": used_inv_freq,
    }
    if spec["rope"] is not None and spec["rope"]["rope_type"] in ("llama3", "yarn", "longrope"):
        cfg_expect["original_max_position_embeddings"] = (
            spec["rope"]["original_max_position_embeddings"])
    if spec["rope"] is not None and spec["rope"]["rope_type"] == "llama3":
        for key in ("low_freq_factor", "high_freq_factor"):
            cfg_expect[key] = spec["rope"][key]
    golden = {
        "format": 1,
        "model": name,
        "description": spec["description"],
        "saved_dtype": spec["dtype"],
        "config_layout": {"t4": "transformers4", "t4_type": "transformers4 (type key)",
                          "t5": "transformers5"}[spec["layout"]],
        "config_has_rope_parameters": "rope_parameters" in saved_config,
        "expect": cfg_expect,
        "max_abs_logit": r7(max_abs_logit),
        "scaling_effect": scaling_effect,
        "sequences": sequences,
        "greedy": greedy,
        "reference": "transformers fp32 CPU, eager attention, reloaded from the saved files",
    }
    write_json(os.path.join(model_dir, "golden.json"), golden)
    size = sum(os.path.getsize(os.path.join(model_dir, f)) for f in os.listdir(model_dir))
    log(f"{name}: ok ({size / 1e6:.2f} MB; files {sorted(os.listdir(model_dir))}; "
        f"max|logit| {max_abs_logit:.3g}; greedy min gap {greedy['min_top2_gap']:.3g})")
    return {"name": name, "dir": name, "bytes": size}


# =============================================================================================
# Conformance corpus (deterministic)
# =============================================================================================

WORDS = {
    "english": ("the quick brown fox jumps over lazy dog attention cluster centroid server token "
                "model stream query context budget sparse key value hello world Python function "
                "return import class inference memory bandwidth kernel layer head window "
                "threshold calibration sample Hello World The A I").split(),
    "accented": ("café naïve résumé über façade São niño Zürich élève garçon déjà Straße Ærø "
                 "smørrebrød Łódź Dvořák İstanbul ılık Ångström crème brûlée jalapeño "
                 "Möbius Øresund").split(),
    "cyrillic": "Привет мир как дела спасибо до свидания Москва ёлка съешь ЖУРНАЛ Україна".split(),
    "greek": "Καλημέρα κόσμε ευχαριστώ Αθήνα λόγος ψυχή ΑΛΦΑ ωμέγα".split(),
    "cjk": ("你好 世界 中文 数据 模型 注意力 東京 日本語 こんにちは ありがとう カタカナ 한국어 서울 "
            "안녕하세요 漢字 机器学习").split(),
    "arabic": "مرحبا بالعالم شكرا القاهرة كتاب العربية".split(),
    "hindi": "नमस्ते दुनिया धन्यवाद भारत हिन्दी क्षत्रिय".split(),
    "other": "สวัสดี שלום ሰላም Ողջույն გამარჯობა ಕನ್ನಡ தமிழ்".split(),
}
EMOJI = ["😀", "😂", "👍", "🎉", "🚀", "❤️", "👋🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇫🇷", "🇯🇵",
         "🧑‍💻", "👩🏾‍🔬", "✨", "🔥", "🤖", "☕", "✅", "🙂", "💯"]
PUNCT = list(".,!?;:'\"()[]{}<>/\\|@#$%^&*-_+=~`") + ["…", "—", "–", "«", "»", "¿", "¡", "·",
                                                       "•", "©", "°", "€", "£", "¥", "→", "∑",
                                                       "≤", "∞", "½", "²", "Ⅻ"]
SPACES = [" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\r\n", "\r\n\r\n", " \n ", "\r",
          "\u00a0", "\u3000", "\u2028", "\u0085", "\x0b", "\x0c", "    "]
CONTROLS = ["\x00", "\x01", "\x07", "\x1b", "\x1f", "\x7f", "\u200b", "\u200d", "\ufeff",
            "\u00ad", "\u200e"]
CONTRACTIONS = ["don't", "I'M", "we'll", "they'RE", "you've", "she'd", "it's", "I'm", "DON'T",
                "y'all", "rock'n'roll", "'tis", "o'clock", "isn't", "won't", "can't", "He'S",
                "we'D", "you'Ve", "they'Ll", "'s", "''", "'"]
CODE = [
    "def f(x):\n    return x ** 2\n",
    "int main() {\n\treturn 0;\n}\n",
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }",
    "if x != None and y >= 10:\n        print(f\"{x=}, {y!r}\")",
    "<html><body><p class=\"x\">Hi &amp; bye</p></body></html>",
    "{\"key\": [1, 2.5, null, true], \"nested\": {\"a\": \"b\"}}",
    "SELECT id, name FROM users WHERE age > 21 ORDER BY name;",
    "git commit -m 'fix: handle \\r\\n' && make -j8",
    "https://example.com/path?q=squeezed+attention&lang=en#frag",
    "x = [i**2 for i in range(10)]  # squares",
    "#include <vector>\nstd::vector<int> v{1, 2, 3};",
    "    indented\n        more\n\tand tab",
    "a\\tb\\nc",
    "C:\\Users\\name\\file.txt",
    "$ ./run --flag=1 --other \"two words\"",
    "λx.x + 1 ≡ id ∘ succ",
]
SPECIAL_TEXT = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>",
                "<|end_header_id|>", "<think>", "squeezed attention", "<s>", "</s>", "<unk>",
                "<0x41>", "▁", "<|begin_of_text", "|>", "<|", "<think", "squeezed  attention"]


def fixed_cases():
    cases = [
        "", " ", "  ", "\t", "\n", "\r\n", "\r", "a", "A", "hello", "Hello world",
        "Hello, world!", "  hello", "hello  ", "a\r\n\r\nb", "line1\nline2\n", "x  \n  y",
        "end   ", "\n\nhello\n", "a\tb", "a  b", "don't", "I'M", "it's", "'sup", "'hello",
        "we'll they'VE she'd", "123456", "1234567", "3.14159", "1,000,000", "2024-01-15",
        "0x1F", "1e-5", "-42", "+7", "99.9%", "٣٤٥٦", "१२३४", "x²", "½ ⅓ ¾", "Ⅻ", "１２３",
        "ＡＢＣ", "abc123def", "A1B2C3", "007", "12345678901234567890123456789012345678901234",
        "Привет, мир!", "Καλημέρα κόσμε", "你好，世界！", "こんにちは世界", "안녕하세요",
        "مرحبا بالعالم", "नमस्ते दुनिया", "Straße", "İstanbul ılık", "e\u0301", "ñ", "n\u0303",
        "Ça va? Élève naïve café", "שלום עולם", "สวัสดีครับ", "👍", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇫🇷🇯🇵",
        "👋🏽 hi", "hi 👋🏽!", "🤖🤖🤖", "I ❤️ NY", "✅ done", "\x00", "\x01\x02\x03",
        "\x7f", "a\x0bb\x0cc", "\u200b", "a\u200db", "\ufeffBOM", "\u00a0", "a\u00a0b",
        "\u3000", "a\u2028b", "a\u0085b", "\x1c\x1d\x1e\x1f", "tab\there", "\t\tindent",
        "trailing\n\n\n", "   leading", "mixed \t \n \r\n end", "<|begin_of_text|>Hello",
        "a<|end_of_text|>b", "<|begin_of_text|><|begin_of_text|>", "<|begin_of_tex",
        "Hi<|eot_id|>", "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
        "<think>hmm</think>", "use squeezed attention now", "squeezed attentions",
        "<s>hello</s>", "<unk>", "<0x41>", "▁", "▁▁hello", "a▁b", "@@ -1,3 +1,4 @@",
        "!!!", "???", "...", "—", "“quoted”", "‘single’", "«guillemets»", "¿Qué?", "¡Hola!",
        "a" * 500, " " * 100, "\n" * 50, "ab" * 200, "1" * 200, "😀" * 40, "的" * 60,
        "The quick brown fox jumps over the lazy dog. " * 20,
    ]
    cases += CODE + CONTRACTIONS + SPECIAL_TEXT + EMOJI + SPACES + CONTROLS + PUNCT
    for words in WORDS.values():
        cases += words
        cases.append(" ".join(words))
    return cases


def random_segment(rng):
    kind = rng.choices(
        ["english", "accented", "cyrillic", "greek", "cjk", "arabic", "hindi", "other",
         "emoji", "punct", "space", "number", "control", "contraction", "code", "special"],
        weights=[30, 8, 6, 4, 6, 3, 3, 2, 5, 8, 8, 8, 2, 4, 2, 2])[0]
    if kind in WORDS:
        word = rng.choice(WORDS[kind])
        r = rng.random()
        if r < 0.1:
            word = word.upper()
        elif r < 0.2:
            word = word.capitalize()
        return word
    if kind == "emoji":
        return rng.choice(EMOJI)
    if kind == "punct":
        return "".join(rng.choice(PUNCT) for _ in range(rng.randint(1, 3)))
    if kind == "space":
        return rng.choice(SPACES)
    if kind == "number":
        r = rng.random()
        if r < 0.5:
            return str(rng.randrange(10 ** rng.randint(1, 12)))
        if r < 0.7:
            return f"{rng.uniform(-1000, 1000):.{rng.randint(1, 6)}f}"
        if r < 0.85:
            return f"{rng.randrange(1, 10**9):,}"
        return "".join(rng.choice("0123456789") for _ in range(rng.randint(13, 40)))
    if kind == "control":
        return rng.choice(CONTROLS)
    if kind == "contraction":
        return rng.choice(CONTRACTIONS)
    if kind == "code":
        return rng.choice(CODE)
    return rng.choice(SPECIAL_TEXT)


def random_text(rng, max_segments):
    parts = []
    for i in range(rng.randint(1, max_segments)):
        if i > 0:
            r = rng.random()
            parts.append(" " if r < 0.6 else ("" if r < 0.8 else rng.choice(SPACES)))
        parts.append(random_segment(rng))
    return "".join(parts)


def char_soup(rng):
    pool = ("".join(WORDS["english"]) + "".join(WORDS["accented"]) + "".join(WORDS["cyrillic"])
            + "".join(WORDS["cjk"]) + "".join(WORDS["greek"]) + "0123456789" + "".join(PUNCT)
            + " \t\n\r'")
    chars = sorted(set(pool))
    return "".join(rng.choice(chars) for _ in range(rng.randint(1, 30)))


def build_corpus():
    rng = random.Random(20240501)
    corpus, seen = [], set()

    def add(s):
        if s not in seen:
            seen.add(s)
            corpus.append(s)

    for s in fixed_cases():
        add(s)
    while len(corpus) < 1900:
        add(random_text(rng, 12))
    while len(corpus) < 2300:
        add(char_soup(rng))
    for n in (200, 600, 1500):  # a few long documents
        add(random_text(rng, n))
    for s in corpus:  # never a lone surrogate or U+017F (see engine/tokenizer/llama3_pretokenizer)
        assert not any(0xD800 <= ord(c) <= 0xDFFF or c == "\u017f" for c in s)
    return corpus


def training_texts(seed, n, allow_newlines):
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        t = random_text(rng, 25)
        if not allow_newlines:
            t = "".join(c for c in t if c not in "\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")
            t = "".join(c for c in t if unicodedata.category(c) != "Cc" or c == "\t").strip()
        if t:
            texts.append(t)
    # Plenty of plain English so that frequent words get merges and rare scripts fall back to
    # bytes.
    for _ in range(n):
        texts.append(" ".join(rng.choice(WORDS["english"]) for _ in range(rng.randint(3, 15))))
    return texts


# =============================================================================================
# Tokenizers
# =============================================================================================

def build_sentencepiece(out_dir, corpus):
    import sentencepiece as spm
    tok_dir = os.path.join(out_dir, "tokenizers")
    texts = training_texts(7, 3000, allow_newlines=False)
    with tempfile.TemporaryDirectory() as tmp:
        train_path = os.path.join(tmp, "train.txt")
        with open(train_path, "w", encoding="utf-8") as f:
            for t in texts:
                f.write(t + "\n")
        prefix = os.path.join(tmp, "sp")
        last_error = None
        # Llama-2's tokenizer settings: BPE, byte fallback, digits split, no normalization.
        for coverage, vocab in ((0.995, 800), (0.98, 800), (0.95, 800), (0.98, 1200)):
            try:
                spm.SentencePieceTrainer.train(
                    input=train_path, model_prefix=prefix, vocab_size=vocab, model_type="bpe",
                    byte_fallback=True, character_coverage=coverage, split_digits=True,
                    allow_whitespace_only_pieces=True, remove_extra_whitespaces=False,
                    normalization_rule_name="identity", add_dummy_prefix=True, unk_id=0,
                    bos_id=1, eos_id=2, pad_id=-1, hard_vocab_limit=False, num_threads=1,
                    max_sentence_length=65536)
                last_error = None
                break
            except Exception as e:  # retried with settings that need fewer characters
                last_error = e
                log(f"sentencepiece training (coverage {coverage}, vocab {vocab}) failed: {e}")
        if last_error is not None:
            raise last_error
        shutil.copyfile(prefix + ".model", os.path.join(tok_dir, "sp.model"))
    sp = spm.SentencePieceProcessor(model_file=os.path.join(tok_dir, "sp.model"))
    ids, decoded = [], []
    round_trips = 0
    for text in corpus:
        piece_ids = [int(i) for i in sp.encode(text)]
        back = sp.decode(piece_ids)
        ids.append(piece_ids)
        decoded.append(None if back == text else back)
        round_trips += back == text
    byte_pieces = sum(1 for row in ids for i in row if sp.is_byte(i))
    write_json(os.path.join(tok_dir, "sp_cases.json"), {
        "format": 1, "model": "sp.model", "vocab_size": sp.get_piece_size(),
        "ids": ids, "decoded": decoded,
        "note": "ids = SentencePieceProcessor.encode(corpus[i]); decoded[i] = decode(ids[i]) "
                "when it differs from corpus[i], else null"})
    log(f"sentencepiece: vocab {sp.get_piece_size()}, {len(corpus)} cases, {round_trips} "
        f"round-trip, {byte_pieces} byte-fallback pieces")
    return {"model": "tokenizers/sp.model", "cases": "tokenizers/sp_cases.json",
            "vocab_size": sp.get_piece_size(), "round_trips": round_trips}


def bpe_cases(tok, corpus, with_splits):
    from tokenizers import Regex, pre_tokenizers
    ids, decoded, splits = [], [], []
    for text in corpus:
        enc = tok.encode(text, add_special_tokens=False)
        row = [int(i) for i in enc.ids]
        back = tok.decode(row, skip_special_tokens=True)
        ids.append(row)
        decoded.append(None if back == text else back)
    if with_splits:
        split = pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False)
        for text in corpus:
            splits.append([piece for piece, _ in split.pre_tokenize_str(text)])
    return ids, decoded, splits


def save_tokenizer(tok_dir, variant, data):
    """Writes `data` as tok_dir/variant/tokenizer.json and loads that file back, so that the ids
    come from exactly the file on disk. -> (Tokenizer, its JSON as the library re-reads it)."""
    from tokenizers import Tokenizer
    vdir = os.path.join(tok_dir, variant)
    os.makedirs(vdir, exist_ok=True)
    path = os.path.join(vdir, "tokenizer.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, indent=1)
        f.write("\n")
    loaded = Tokenizer.from_file(path)
    return loaded, json.loads(loaded.to_str())


def build_bpe(out_dir, corpus):
    import tokenizers
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from tokenizers import processors, trainers
    tok_dir = os.path.join(out_dir, "tokenizers")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, min_frequency=2, show_progress=False,
                                  special_tokens=BPE_SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(training_texts(11, 3000, allow_newlines=True), trainer=trainer)
    tok.add_special_tokens(BPE_MORE_SPECIAL)
    tok.add_tokens([AddedToken(content, special=False, normalized=normalized)
                    for content, normalized in BPE_ADDED])
    bos = tok.token_to_id(BPE_SPECIAL[0])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BPE_SPECIAL[0]} $A", pair=f"{BPE_SPECIAL[0]} $A {BPE_SPECIAL[0]} $B",
        special_tokens=[(BPE_SPECIAL[0], bos)])
    base = json.loads(tok.to_str())

    # Sanity: the saved pre-tokenizer is the Llama-3 layout the engine implements.
    pre = base.get("pre_tokenizer") or {}
    pretoks = pre.get("pretokenizers") or [{}, {}]
    if (pre.get("type") != "Sequence" or pretoks[0].get("pattern", {}).get("Regex")
            != LLAMA3_PATTERN or pretoks[1].get("use_regex") is not False):
        raise RuntimeError(f"unexpected pre_tokenizer layout: {json.dumps(pre)[:400]}")

    results = {}
    for variant in ("bpe", "bpe_legacy"):
        data = copy.deepcopy(base)
        merges = data["model"]["merges"]
        if variant == "bpe":  # Llama 3: ignore_merges, merges as pairs
            data["model"]["ignore_merges"] = True
            data["model"]["merges"] = [m.split(" ") if isinstance(m, str) else m for m in merges]
        else:  # older files: "a b" strings, no ignore_merges
            data["model"].pop("ignore_merges", None)
            data["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in merges]
        loaded, reread = save_tokenizer(tok_dir, variant, data)
        if variant == "bpe" and not reread["model"].get("ignore_merges"):
            raise RuntimeError("tokenizers dropped model.ignore_merges on load")
        ids, decoded, splits = bpe_cases(loaded, corpus, with_splits=(variant == "bpe"))
        cases = {"format": 1, "tokenizer": f"{variant}/tokenizer.json",
                 "vocab_size": loaded.get_vocab_size(with_added_tokens=True),
                 "ids": ids, "decoded": decoded,
                 "note": "ids = Tokenizer.encode(corpus[i], add_special_tokens=False).ids; "
                         "decoded[i] = decode(ids, skip_special_tokens=True) when it differs "
                         "from corpus[i], else null; splits[i] = the Split(Llama-3 regex, "
                         "isolated) pieces of corpus[i]"}
        if splits:
            cases["splits"] = splits
        write_json(os.path.join(tok_dir, f"{variant}_cases.json"), cases)
        round_trips = sum(1 for d in decoded if d is None)
        log(f"{variant}: vocab {cases['vocab_size']}, {len(merges)} merges, {len(corpus)} "
            f"cases, {round_trips} round-trip")
        results[variant] = {"tokenizer": f"tokenizers/{variant}/tokenizer.json",
                            "cases": f"tokenizers/{variant}_cases.json",
                            "vocab_size": cases["vocab_size"], "round_trips": round_trips}
    # The two files differ only in layout and ignore_merges; show how often that matters.
    a = json.load(open(os.path.join(tok_dir, "bpe_cases.json"), encoding="utf-8"))["ids"]
    b = json.load(open(os.path.join(tok_dir, "bpe_legacy_cases.json"), encoding="utf-8"))["ids"]
    log(f"ignore_merges changes the ids of {sum(x != y for x, y in zip(a, b))} corpus strings")
    results["tokenizers_version"] = tokenizers.__version__
    return results


# ---- Split pieces and NFC without `tokenizers` (--only splits,nfc) ---------------------------

# Strings beyond the corpus for the Split goldens: case changes inside words (Tekken), titlecase
# (Lt) and modifier (Lm) letters, combining marks after spaces and at the start, "/" after line
# breaks, digit runs. The corpus itself stays as it is: bpe_cases.json indexes it.
SPLIT_EXTRA = [
    "eBay", "NaOH", "iPhone 15 Pro", "HTTPServer", "McDonald's", "ABCdef", "ABc", "aBC",
    "XMLHttpRequest parseJSON toString getHTTPResponseCode", "ǅungla ǅA Ǆ ǆ ǈj Lǈ",
    "ʰello hʰ ʰA Aʰb", "日本語abcDEF", "ÀÉÎõü ÑaÑ", "ΣίσυφοςΑΒΓ", "ПриветМИР мирПривет",
    "x\n/y", "a/b//c", "!\n/\n/x", "path/to/file.txt\r\n/next", " /\n", "/\r\n", " //x",
    "e\u0301t\u00e9", "\u0301x", "\u0301 ", "  \u0301X", "A\u0301B\u0301c", "a\u0301B",
    " \u0301", "\u0301\u0302", "x\u20dd", "a\u0308\u0301Z", "\u00a0\u0301a", "\t\u0301b",
    "!\u0301a", "\n\u0301a", "1\u0301a", "नमस्ते Hindi", "क्षत्रियKSH", "Ⅻ Ⅷabc", "1234567890",
    "٣٤٥٦", "x²³", "3.14159 2024-01-15 1,000,000", "don't WON'T I'M they're we'VE",
    "'s'S 'll'LL", "a'b 'x", "  \n\n  x", "x \u3000y", "end \u2028",
]
BPE_FAMILY_EXTRA = SPLIT_EXTRA + [
    "cafe\u0301 au lait", "café au lait", "I like cafe\u0301 au lait.", "e\u0301\u0301",
    "\u1100\u1161\u11a8 한국어 \u1112\u1161\u11ab", "\u212b\u2126 Å Ω", "\u0958 \u0915\u093c",
    "a\u0323\u0302 a\u0302\u0323 \u1ead", "squeezed attention", "<think>x</think>",
    "<|im_start|>user\nHi<|im_end|>", "[INST]hi[/INST]", "<s>x</s>",
]


def regex_module():
    try:
        import regex
    except ImportError as e:
        raise RuntimeError("this part needs the `regex` module (Debian: apt-get install "
                           "python3-regex, then run with /usr/bin/python3)") from e
    return regex


def split_lengths(compiled, text):
    """UTF-8 byte lengths of the pieces Split(pattern, isolated) cuts `text` into."""
    pieces = [m.group(0) for m in compiled.finditer(text)]
    if "".join(pieces) != text:  # every supported pattern matches every code point
        raise RuntimeError(f"pieces do not cover {text!r}")
    return [len(p.encode("utf-8")) for p in pieces]


def repo_golden(*parts):
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data",
                        "golden", *parts)


def build_splits(out_dir, corpus):
    regex = regex_module()
    tok_dir = os.path.join(out_dir, "tokenizers")
    # The `regex` module must cut the corpus exactly as `tokenizers` (Oniguruma) does: its
    # Llama-3 pieces are checked against the library's own, stored in bpe_cases.json.
    reference = os.path.join(tok_dir, "bpe_cases.json")
    if not os.path.exists(reference):
        reference = repo_golden("tokenizers", "bpe_cases.json")
    with open(reference, encoding="utf-8") as f:
        library_splits = json.load(f)["splits"]
    llama3 = regex.compile(LLAMA3_PATTERN)
    bad = [i for i, text in enumerate(corpus)
           if [m.group(0) for m in llama3.finditer(text)] != library_splits[i]]
    if bad:
        raise RuntimeError(f"the regex module cuts {len(bad)} corpus strings differently from "
                           f"tokenizers' Llama-3 Split, e.g. {corpus[bad[0]]!r}")
    log(f"splits: the regex module {regex.__version__} gives tokenizers' Llama-3 pieces for all "
        f"{len(corpus)} corpus strings")
    results = {}
    for name, pattern in SPLIT_PATTERNS.items():
        compiled = regex.compile(pattern)
        lengths = [split_lengths(compiled, text) for text in corpus + SPLIT_EXTRA]
        path = os.path.join(tok_dir, f"splits_{name}.json")
        write_json(path, {
            "format": 1, "pattern": pattern, "corpus": "corpus.json", "extra": SPLIT_EXTRA,
            "generator": f"python regex {regex.__version__}",
            "lengths": lengths,
            "note": "lengths[i] = the UTF-8 byte lengths of the pieces Split(pattern, "
                    "behavior=isolated) cuts text i into, for the corpus strings then extra; "
                    "computed with the regex module, which gives tokenizers' Llama-3 pieces of "
                    "bpe_cases.json for the whole corpus"})
        results[name] = {"file": f"tokenizers/splits_{name}.json",
                         "pieces": sum(len(row) for row in lengths)}
        log(f"splits_{name}: {len(lengths)} strings, {results[name]['pieces']} pieces, "
            f"{os.path.getsize(path) / 1e3:.0f} KB")
    results["regex_version"] = regex.__version__
    return results


def nfc_cases():
    """(input, NFC) pairs that exercise every step of NFC."""
    nfc = lambda s: unicodedata.normalize("NFC", s)  # noqa: E731
    nfd = lambda s: unicodedata.normalize("NFD", s)  # noqa: E731
    decomposable = [chr(cp) for cp in range(0x110000)
                    if not 0xAC00 <= cp <= 0xD7A3 and unicodedata.decomposition(chr(cp))
                    and not unicodedata.decomposition(chr(cp)).startswith("<")]
    texts = []
    # Every code point with a canonical decomposition, alone in its chunk's context, and its NFD.
    for i in range(0, len(decomposable), 48):
        chunk = "".join(decomposable[i:i + 48])
        texts += [chunk, nfd(chunk), " ".join(decomposable[i:i + 48])]
    # Hangul: syllables (precomposed and as jamo), LV + T, T outside the composable range,
    # lone jamo, jamo around other text.
    syllables = "".join(chr(0xAC00 + k) for k in range(0, 11172, 37))
    texts += [syllables, nfd(syllables), "\u1100\u1161", "\u1100\u1161\u11a8", "\uac00\u11a8",
              "\uac00\u11a7", "\uac01\u11a8", "\u1100\u11a8", "\u1161\u11a8", "\u1100",
              "\u1100\u1100\u1161\u1161", "\u1100\u0301\u1161", "\u1100\u1161\u0301\u11a8",
              "a\u1161", "\u11c2\u1100\u1175\u11c2x"]
    # Canonical ordering and blocking.
    texts += ["a\u0323\u0302", "a\u0302\u0323", "a\u0301\u0301", "a\u0315\u0301",
              "a\u031b\u0323\u0302\u0301", "\u0301a", "\u0301\u0300a\u0300", "e\u0301\u0327",
              "e\u0327\u0301", "o\u0308\u0304", "o\u0304\u0308", "u\u0308\u0301\u0323",
              "\u03b1\u0313\u0301\u0345", "\u03b1\u0345\u0301\u0313", "a\u0338\u0301",
              "A\u030a\u0301", "s\u0323\u0307", "s\u0307\u0323", "q\u0307\u0323",
              "\u05d0\u05b8\u05bc", "\u0915\u093c\u094d", "a\u0300\u0301\u0302\u0303\u0304"]
    # Composition exclusions, singletons, non-starter decompositions, starter + starter pairs.
    texts += ["\u0958\u0959\u095a", "\u0915\u093c", "\ufb2a\u05e9\u05c1", "\u2adc",
              "\u2add\u0338", "\u212b\u2126\u212a\uf900\u2f800", "\u0340\u0341\u0343\u0344",
              "a\u0344", "\u0f73\u0f75\u0f81", "\u0f40\u0f71\u0f72", "\u0b47\u0b3e",
              "\u0b47\u0b57", "\u0b47\u0b3e\u0b57", "\u0dd9\u0dcf\u0dca", "\u1025\u102e",
              "\u1b05\u1b35", "\U000110a5\U000110ba", "\U00011347\U0001133e",
              "\u0061\u0328\u0301", "\u1e9b\u0323", "\u1fc1", "\u1fee\u0301"]
    # Random soups of bases, marks, jamo, precomposed letters, exclusions and singletons.
    rng = random.Random(20240601)
    pool = (list("aeiouAEIOUnNcCsSyYwWzZ ") + ["\u03b1", "\u03c9", "\u0399", "\u0415"]
            + [chr(c) for c in (0x300, 0x301, 0x302, 0x303, 0x304, 0x306, 0x307, 0x308,
                                0x30a, 0x30c, 0x313, 0x314, 0x315, 0x31b, 0x323, 0x327,
                                0x328, 0x334, 0x338, 0x342, 0x345, 0x5b4, 0x5bc, 0x93c,
                                0x94d, 0xf71, 0xf72, 0xf80, 0x1dc0, 0x20d0, 0x3099)]
            + [chr(c) for c in (0x1100, 0x1109, 0x1161, 0x1175, 0x11a7, 0x11a8, 0x11c2, 0xac00,
                                0xd7a3, 0xc0, 0xe9, 0x1e69, 0x1ead, 0x1f71, 0x958, 0xfb2a,
                                0x212b, 0xf900, 0x344, 0xf73, 0x915, 0x5d0, 0x3046, 0x304b)])
    for _ in range(400):
        texts.append("".join(rng.choice(pool) for _ in range(rng.randint(1, 14))))
    return [[t, nfc(t)] for t in texts]


def build_nfc(out_dir, corpus):
    tok_dir = os.path.join(out_dir, "tokenizers")
    cases = nfc_cases()
    changed = [[i, unicodedata.normalize("NFC", s)] for i, s in enumerate(corpus)
               if unicodedata.normalize("NFC", s) != s]
    path = os.path.join(tok_dir, "nfc_cases.json")
    write_json(path, {
        "format": 1, "unicodedata": unicodedata.unidata_version, "cases": cases,
        "corpus_changed": changed,
        "note": "cases[k] = [text, unicodedata.normalize('NFC', text)]; corpus_changed lists "
                "[i, NFC(corpus[i])] for the corpus strings NFC changes (the others it keeps)"})
    log(f"nfc: {len(cases)} cases ({sum(a != b for a, b in cases)} changed by NFC), "
        f"{len(changed)} corpus strings changed, {os.path.getsize(path) / 1e3:.0f} KB")
    return {"file": "tokenizers/nfc_cases.json", "cases": len(cases),
            "corpus_changed": len(changed), "unicodedata": unicodedata.unidata_version}


# ---- Qwen2 and Mistral-Nemo tokenizer.json layouts (--only bpe_qwen2,bpe_tekken) -------------

BPE_FAMILIES = {
    # Qwen2/2.5/3: NFC, Qwen2 regex, no BOS (ByteLevel post-processor), "a b" merges, no
    # ignore_merges; "<think>" as in Qwen3; a normalized added token whose content is not NFC.
    "bpe_qwen2": dict(
        seed=12, pattern=QWEN2_PATTERN, nfc=True, ignore_merges=False,
        merges="strings", special=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        more_special=[], bos=None,
        added=[("<think>", False), ("</think>", False), ("squeezed attention", True),
               ("cafe\u0301 au lait", True)]),
    # Mistral-Nemo (Tekken): no normalizer, Tekken regex, <s> BOS, ["a", "b"] merges,
    # ignore_merges.
    "bpe_tekken": dict(
        seed=13, pattern=TEKKEN_PATTERN, nfc=False, ignore_merges=True,
        merges="pairs", special=["<unk>", "<s>", "</s>"], more_special=["[INST]", "[/INST]"],
        bos="<s>", added=[("squeezed attention", True)]),
}
# Mixed-case words and combining marks, so that the trained merges meet what the regexes split.
FAMILY_TRAINING_EXTRA = ("eBay iPhone NaOH McDonald HTTPServer XMLHttpRequest parseJSON "
                         "toString café naïve résumé crème brûlée 한국어 서울 path/to/file "
                         "1234567890").split()


def build_bpe_family(out_dir, corpus, variant):
    import tokenizers
    from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, normalizers,
                            pre_tokenizers, processors, trainers)
    spec = BPE_FAMILIES[variant]
    tok_dir = os.path.join(out_dir, "tokenizers")
    tok = Tokenizer(models.BPE())
    if spec["nfc"]:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(spec["pattern"]), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, min_frequency=2, show_progress=False,
                                  special_tokens=spec["special"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    rng = random.Random(spec["seed"])
    texts = training_texts(spec["seed"], 3000, allow_newlines=True)
    texts += [" ".join(rng.choice(FAMILY_TRAINING_EXTRA) for _ in range(rng.randint(3, 12)))
              for _ in range(500)]
    tok.train_from_iterator(texts, trainer=trainer)
    if spec["more_special"]:
        tok.add_special_tokens(spec["more_special"])
    tok.add_tokens([AddedToken(content, special=False, normalized=normalized)
                    for content, normalized in spec["added"]])
    if spec["bos"]:
        bos = tok.token_to_id(spec["bos"])
        tok.post_processor = processors.TemplateProcessing(
            single=f"{spec['bos']} $A", pair=f"{spec['bos']} $A {spec['bos']} $B",
            special_tokens=[(spec["bos"], bos)])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    data = json.loads(tok.to_str())

    # Sanity: the saved layout is the one the engine implements for this family.
    normalizer = data.get("normalizer")
    pre = data.get("pre_tokenizer") or {}
    pretoks = pre.get("pretokenizers") or [{}, {}]
    if ((normalizer or {}).get("type") != ("NFC" if spec["nfc"] else None)
            or pre.get("type") != "Sequence"
            or pretoks[0].get("pattern", {}).get("Regex") != spec["pattern"]
            or pretoks[1].get("use_regex") is not False):
        raise RuntimeError(f"unexpected layout: normalizer {normalizer}, pre_tokenizer "
                           f"{json.dumps(pre)[:400]}")
    merges = data["model"]["merges"]
    if spec["merges"] == "pairs":
        data["model"]["merges"] = [m.split(" ") if isinstance(m, str) else m for m in merges]
    else:
        data["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in merges]
    data["model"]["ignore_merges"] = spec["ignore_merges"]

    loaded, reread = save_tokenizer(tok_dir, variant, data)
    if bool(reread["model"].get("ignore_merges")) != spec["ignore_merges"]:
        raise RuntimeError("tokenizers changed model.ignore_merges on load")

    strings = corpus + BPE_FAMILY_EXTRA
    ids, decoded = [], []
    for text in strings:
        row = [int(i) for i in loaded.encode(text, add_special_tokens=False).ids]
        back = loaded.decode(row, skip_special_tokens=True)
        ids.append(row)
        decoded.append(None if back == text else back)

    # Cross-checks of the goldens made without `tokenizers`: the library's Split pieces against
    # splits_*.json, its NFC against unicodedata (nfc_cases.json).
    checks = {}
    name = variant[len("bpe_"):]
    split_file = os.path.join(tok_dir, f"splits_{name}.json")
    if not os.path.exists(split_file):
        split_file = repo_golden("tokenizers", f"splits_{name}.json")
    if os.path.exists(split_file):
        with open(split_file, encoding="utf-8") as f:
            split_golden = json.load(f)
        split = pre_tokenizers.Split(Regex(spec["pattern"]), behavior="isolated", invert=False)
        texts = corpus + split_golden["extra"]
        bad = [i for i, text in enumerate(texts)
               if [len(p.encode("utf-8")) for p, _ in split.pre_tokenize_str(text)]
               != split_golden["lengths"][i]]
        checks["split_mismatches"] = len(bad)
        if bad:
            raise RuntimeError(f"tokenizers' Split cuts {len(bad)} strings differently from "
                               f"{split_file}, e.g. {texts[bad[0]]!r}")
    if spec["nfc"]:
        nfc_texts = [t for t, _ in nfc_cases()] + corpus
        bad = [t for t in nfc_texts
               if loaded.normalizer.normalize_str(t) != unicodedata.normalize("NFC", t)]
        checks["nfc_mismatches_vs_unicodedata"] = len(bad)
        if bad:  # recorded, not fatal: the library's Unicode version may be older
            log(f"{variant}: tokenizers' NFC differs from unicodedata "
                f"{unicodedata.unidata_version} on {len(bad)} of {len(nfc_texts)} strings, "
                f"e.g. {bad[0]!r}")
        if any(loaded.normalizer.normalize_str(t) != unicodedata.normalize("NFC", t)
               for t in strings):
            raise RuntimeError("tokenizers' NFC differs from unicodedata on a tested string")

    cases = {"format": 1, "tokenizer": f"{variant}/tokenizer.json",
             "vocab_size": loaded.get_vocab_size(with_added_tokens=True),
             "extra": BPE_FAMILY_EXTRA, "ids": ids, "decoded": decoded,
             "bos": spec["bos"], "checks": checks,
             "note": "ids[i] = Tokenizer.encode(text i, add_special_tokens=False).ids for the "
                     "corpus strings then extra; decoded[i] = decode(ids, "
                     "skip_special_tokens=True) when it differs from the text, else null"}
    write_json(os.path.join(tok_dir, f"{variant}_cases.json"), cases)
    round_trips = sum(1 for d in decoded if d is None)
    log(f"{variant}: vocab {cases['vocab_size']}, {len(merges)} merges, {len(strings)} cases, "
        f"{round_trips} round-trip, checks {checks}")
    return {"tokenizer": f"tokenizers/{variant}/tokenizer.json",
            "cases": f"tokenizers/{variant}_cases.json", "vocab_size": cases["vocab_size"],
            "round_trips": round_trips, "checks": checks,
            "tokenizers_version": tokenizers.__version__}


# =============================================================================================

def versions():
    out = {"python": sys.version.split()[0], "unicodedata": unicodedata.unidata_version}
    for mod in ("torch", "transformers", "tokenizers", "sentencepiece", "safetensors"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception as e:  # recorded, not fatal
            out[mod] = f"unavailable: {e}"
    return out


def dir_size(path):
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output directory (tests/data/golden)")
    parser.add_argument("--only", default="", help="comma-separated subset of parts to build: "
                        "model names, 'families' (the models of FAMILIES), 'sentencepiece', "
                        "'bpe', 'bpe_qwen2', 'bpe_tekken', 'splits', 'nfc' (default: "
                        "everything)")
    parser.add_argument("--manifest-from", default="", help="with --only: the manifest.json whose "
                        "other entries are kept (default: --out's own, when present)")
    args = parser.parse_args()
    out_dir = os.path.abspath(args.out)
    os.makedirs(out_dir, exist_ok=True)
    os.makedirs(os.path.join(out_dir, "tokenizers"), exist_ok=True)
    only = set(filter(None, args.only.split(",")))
    if "families" in only:
        only = (only - {"families"}) | set(FAMILIES)
    tokenizer_parts = [
        ("sentencepiece", build_sentencepiece), ("bpe", build_bpe),
        # splits and nfc need no `tokenizers`; the families cross-check against them.
        ("splits", build_splits), ("nfc", build_nfc),
        ("bpe_qwen2", lambda out, corpus: build_bpe_family(out, corpus, "bpe_qwen2")),
        ("bpe_tekken", lambda out, corpus: build_bpe_family(out, corpus, "bpe_tekken")),
    ]
    unknown = only - {m["name"] for m in MODELS} - {part for part, _ in tokenizer_parts}
    if unknown:
        parser.error(f"--only names unknown parts: {sorted(unknown)}")
    wanted = lambda part: not only or part in only  # noqa: E731
    start = time.time()
    vers = versions()
    log(f"versions: {vers}")
    log(f"writing to {out_dir}")

    failures = []
    manifest_path = os.path.join(out_dir, "manifest.json")
    manifest = {"models": [], "tokenizers": {}}
    base_manifest = args.manifest_from or manifest_path
    if only and os.path.exists(base_manifest):  # partial rebuild: keep the rest of the manifest
        with open(base_manifest, encoding="utf-8") as f:
            manifest = json.load(f)
        manifest["failures"] = []

    corpus = build_corpus()
    write_json(os.path.join(out_dir, "tokenizers", "corpus.json"),
               {"format": 1, "strings": corpus})
    log(f"corpus: {len(corpus)} strings, {sum(len(s) for s in corpus)} code points")

    for part, fn in tokenizer_parts:
        if not wanted(part):
            continue
        try:
            t0 = time.time()
            manifest["tokenizers"][part] = fn(out_dir, corpus)
            log(f"{part}: done in {time.time() - t0:.1f} s")
        except Exception:
            failures.append(part)
            log(f"{part}: FAILED\n{traceback.format_exc()}")

    try:
        import torch
        import transformers
        torch.set_grad_enabled(False)
        for spec in MODELS:
            if not wanted(spec["name"]):
                continue
            try:
                t0 = time.time()
                info = build_model(torch, transformers, spec, out_dir)
                manifest["models"] = [m for m in manifest["models"] if m["name"] != spec["name"]]
                manifest["models"].append(info)
                log(f"{spec['name']}: done in {time.time() - t0:.1f} s")
            except Exception:
                failures.append(spec["name"])
                log(f"{spec['name']}: FAILED\n{traceback.format_exc()}")
    except ImportError:
        if any(wanted(spec["name"]) for spec in MODELS):  # tokenizer-only runs need no torch
            failures.append("torch/transformers import")
            log(f"cannot import torch/transformers:\n{traceback.format_exc()}")

    manifest.update({"format": 1, "command": COMMAND, "versions": vers,
                     "corpus": "tokenizers/corpus.json", "corpus_size": len(corpus),
                     "failures": failures})
    manifest["models"].sort(key=lambda m: m["name"])
    with open(manifest_path, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")

    total = dir_size(out_dir)
    log("=" * 70)
    log(f"models:     {[m['name'] for m in manifest['models']]}")
    log(f"tokenizers: {sorted(manifest['tokenizers'])}")
    log(f"total size: {total / 1e6:.2f} MB ({'OK' if total < 20e6 else 'OVER the 20 MB budget'})")
    log(f"time:       {time.time() - start:.1f} s")
    if failures:
        log(f"FAILED parts: {failures} (see the tracebacks above)")
        return 1
    log("all parts generated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
