#!/usr/bin/env python3
"""Trains Squeeze's bundled demo model: a small Llama that retrieves facts from long contexts.

One command, one GPU, about ten minutes, no network:

    python3 tools/train_demo_model.py --out models/squeeze-demo            # the real run
    python3 tools/train_demo_model.py --smoke                              # ~1.5 min pipeline check

Steps (all timed and written into the model card):
  1. Tokenizer: SentencePiece BPE trained on generated task text (byte fallback, digits split so a
     number is one token per digit and copying it is exact). Saved as tokenizer.model.
  2. Data: RULER-style tasks from tools/retrieval_tasks.py (single, multikey, multivalue,
     vartrack), generated and tokenized on the fly by a pool of CPU workers, a few batches ahead
     of the GPU. Every batch depends only on (seed, step), never on another batch.
  3. Model: Hugging Face LlamaForCausalLM (GQA, tied embeddings, RoPE), fp32 master weights,
     bf16 autocast, SDPA attention, fused AdamW, warmup + cosine on the time budget.
  4. Curriculum: context lengths grow from 64 to --max-len tokens over the run. All rows of a
     batch aim at one length, so right padding is small; padding needs no attention mask because
     attention is causal and pads come after every real token (their labels are ignored).
  5. Loss: cross entropy on the answer tokens (+ EOS), plus --lm-weight x the LM loss on the
     context and question. Training rows ask up to --max-questions questions about one context,
     and most repeat some filler sentences (--filler-repeat): both densify the copying signal.
     Without the repeats the answer loss stayed on its plateau (uniform digits) in every trial;
     with them retrieval appears after ~1000 steps.
  6. Eval: exact match on held-out tasks (namespace "eval"), teacher-forced: greedy decoding
     yields the answer iff the argmax at every answer position is the answer token, so one
     forward per task gives the greedy-decode score. The final scores are measured again on the
     saved bf16 model reloaded from disk, and a few are checked by real greedy decoding.
  7. Save: save_pretrained (safetensors, bf16), tokenizer.model, tokenizer_config.json,
     generation_config.json, README.md (model card, filled in from the run),
     training_log.json.

Sequence layout = what the Squeeze server sees: [BOS] Encode(context) Encode(question) answer EOS,
the context and the question tokenized separately (a context is registered on its own, the
question is the Generate input). A small fraction (--joint-prob) is tokenized as one text, so a
whole-prompt client (e.g. plain transformers) also works.

The time budget (--time-budget-min) covers the whole run: training stops --final-reserve-s
before it, then the final eval and the save run.

Only torch, transformers, sentencepiece and the standard library are used.
"""

from __future__ import annotations

import argparse
import array
import collections
import json
import math
import multiprocessing as mp
import os
import platform
import random
import re
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import retrieval_tasks as rt  # noqa: E402

try:  # The data pipeline below is plain Python; only training needs torch.
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover - lets a CPU-only machine import the data functions.
    torch = None
    F = None

BOS_ID, EOS_ID, UNK_ID = 1, 2, 0

# (end of phase as a fraction of the training time, min tokens, max tokens). Lengths are drawn
# uniformly in [min, max] per batch and clipped to --max-len. Very short contexts first: at
# initialisation attention is spread evenly, so the gradient that forms a retrieval head shrinks
# with the number of positions (a first recipe starting at 256-1024 tokens never left the
# plateau); the last phase covers 4K..max-len.
CURRICULUM = (
    (0.30, 64, 512),
    (0.42, 256, 2048),
    (0.55, 1024, 4096),
    (0.72, 2048, 8192),
    (1.00, 4096, 1 << 30),
)
VARIANT_WEIGHTS = (("single", 0.2), ("multikey", 0.35), ("multivalue", 0.2), ("vartrack", 0.25))
QUESTION_TOKENS = 40  # rough question + answer overhead, subtracted when aiming at a length


# ----------------------------------------------------------------------------------------------
# Tokenizer.

def _corpus_chunk(args: tuple) -> list[str]:
    """Lines of tokenizer training text from tasks [begin, end) of namespace 'tok'. SentencePiece
    reads one sentence per line, so paragraphs, questions and answers become separate lines."""
    seed, begin, end, words = args
    lines = []
    for i in range(begin, end):
        t = rt.make_task(rt.task_rng("tok", seed, i), rt.VARIANTS[i % len(rt.VARIANTS)], words)
        lines.extend(l for l in t.context.split("\n") if l)
        lines.extend(l for l in (t.question + t.answer).split("\n") if l)
    return lines


def train_tokenizer(pool, work_dir: str, args) -> tuple[str, int]:
    """Trains the SentencePiece model; returns (path of tokenizer.model, vocab size).

    The generated text has a small vocabulary: BPE runs out of useful merges near 2K pieces (every
    word is then one piece; beyond that it memorises random vartrack variable names), and a larger
    request may exceed what the corpus supports, in which case the largest size SentencePiece
    accepts is used and reported."""
    import sentencepiece as spm

    n, words = args.tok_tasks, args.tok_words
    chunks = [(args.seed, b, min(n, b + 25), words) for b in range(0, n, 25)]
    corpus = os.path.join(work_dir, "tok_corpus.txt")
    n_lines = 0
    with open(corpus, "w", encoding="utf-8") as f:
        for lines in pool.imap(_corpus_chunk, chunks):
            f.write("\n".join(lines) + "\n")
            n_lines += len(lines)
    prefix = os.path.join(work_dir, "tokenizer")
    vocab = args.vocab_size
    for _ in range(3):
        # The flag-string form is accepted by every sentencepiece release (no bool conversion).
        flags = " ".join([
            f"--input={corpus}", f"--model_prefix={prefix}", "--model_type=bpe",
            f"--vocab_size={vocab}", "--byte_fallback=true", "--split_digits=true",
            "--unk_id=0", "--bos_id=1", "--eos_id=2", "--pad_id=-1",
            # Llama-style: no normalisation, one dummy-prefix space, whitespace kept as is.
            "--normalization_rule_name=identity", "--add_dummy_prefix=true",
            "--remove_extra_whitespaces=false", "--allow_whitespace_only_pieces=true",
            "--character_coverage=1.0", f"--num_threads={max(1, os.cpu_count() or 1)}",
            f"--input_sentence_size={args.tok_max_sentences}", "--shuffle_input_sentence=true",
            "--minloglevel=1",
        ])
        try:
            spm.SentencePieceTrainer.train(flags)
            break
        except RuntimeError as e:
            m = re.search(r"value <= (\d+)", str(e))
            if not m:
                raise
            print(f"[tokenizer] vocab {vocab} too large for the corpus; using {m.group(1)}",
                  flush=True)
            vocab = int(m.group(1))
    sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
    if (sp.bos_id(), sp.eos_id(), sp.unk_id()) != (BOS_ID, EOS_ID, UNK_ID):
        raise RuntimeError(f"tokenizer special ids are {sp.bos_id()}/{sp.eos_id()}/{sp.unk_id()}, "
                           f"expected {BOS_ID}/{EOS_ID}/{UNK_ID}")
    print(f"[tokenizer] {sp.get_piece_size()} pieces from {n_lines} lines ({n} tasks)", flush=True)
    return prefix + ".model", sp.get_piece_size()


# ----------------------------------------------------------------------------------------------
# Data: tasks -> token ids. Runs in pool workers; each caches its SentencePiece processor.

_SP = {}


def _processor(path: str):
    if path not in _SP:
        import sentencepiece as spm
        _SP[path] = spm.SentencePieceProcessor(model_file=path)
    return _SP[path]


def _qa_ids(sp, question: str, answer: str) -> tuple[list[int], list[int]]:
    """-> (question ids, answer ids + EOS). The answer ids are the tail of
    Encode(question + answer): exactly what a greedy decoder must emit after the question for
    the decoded text to read question + answer."""
    q_ids = sp.encode(question)
    qa_ids = sp.encode(question + answer)
    if qa_ids[:len(q_ids)] != q_ids or len(qa_ids) == len(q_ids):
        raise ValueError(f"answer {answer!r} does not tokenize as a continuation of the "
                         f"question {question!r}")
    return q_ids, qa_ids[len(q_ids):] + [EOS_ID]


def encode_task(sp, task: rt.Task, joint: bool = False,
                extra: tuple = ()) -> tuple[list[int], int, list[int]]:
    """-> (ids, answer_start, answer_mask).

    ids = [BOS] context question answer EOS, then for each (question, answer) of `extra`:
    question answer EOS. answer_start is where the first answer begins (what serving predicts);
    answer_mask[i] = 1 where ids[i] is an answer token or the EOS closing one."""
    q_ids, a_ids = _qa_ids(sp, task.question, task.answer)
    prompt = sp.encode(task.context + task.question) if joint else sp.encode(task.context) + q_ids
    ids = [BOS_ID] + prompt + a_ids
    start = 1 + len(prompt)
    mask = [0] * start + [1] * len(a_ids)
    for q, a in extra:
        q_ids, a_ids = _qa_ids(sp, q, a)
        ids += q_ids + a_ids
        mask += [0] * len(q_ids) + [1] * len(a_ids)
    return ids, start, mask


def make_batch(spec: dict) -> dict:
    """Generates and tokenizes spec['rows'] tasks aimed at spec['target_tokens'] tokens each.

    Row r uses random.Random('<namespace>:<seed>:<step>:<r>'), so a batch is a pure function of
    its spec. A row asks up to spec['questions'] questions about its context (the first one
    right after the context, as in serving). Returns the ids right-padded with EOS to the longest
    row and the answer mask, flattened row-major into int32 / int8 arrays (they pickle
    compactly), with each row's length and first answer start."""
    t0 = time.time()
    sp = spec.get("sp") or _processor(spec["sp_path"])
    variants, weights = zip(*spec["variant_weights"])
    rows, masks, lengths, starts, kinds = [], [], [], [], []
    for r in range(spec["rows"]):
        rng = random.Random(f"{spec['namespace']}:{spec['seed']}:{spec['step']}:{r}")
        variant = rng.choices(variants, weights)[0]
        n_q = spec.get("questions", 1)  # one count per batch keeps row lengths alike
        words = max(20, int((spec["target_tokens"] - QUESTION_TOKENS) / spec["tpw"][variant]))
        joint = rng.random() < spec.get("joint_prob", 0.0)
        # Most training rows repeat some filler sentences: copyable text gives the LM loss a
        # dense copying signal, which makes induction (retrieval) heads form early; without it
        # the answer loss sat on its plateau for thousands of steps.
        repeat = spec.get("filler_repeat", 0.0) if rng.random() < 0.7 else 0.0
        for _ in range(8):
            task = rt.make_task(rng, variant, words, repeat)
            extra = rng.sample(task.extra, min(n_q - 1, len(task.extra)))
            ids, start, mask = encode_task(sp, task, joint, extra)
            while len(ids) > spec["max_len"] and extra:  # too long: fewer extra questions first
                extra.pop()
                ids, start, mask = encode_task(sp, task, joint, extra)
            if len(ids) <= spec["max_len"]:
                break
            words = max(1, int(words * spec["max_len"] / len(ids) * 0.9))
        else:
            raise RuntimeError(f"could not fit a {variant} task into {spec['max_len']} tokens "
                               f"(its facts alone need more); raise --max-len")
        rows.append(ids)
        masks.append(mask)
        lengths.append(len(ids))
        starts.append(start)
        kinds.append(variant)
    T = max(lengths)
    flat, flat_mask = array.array("i"), array.array("b")
    for ids, mask in zip(rows, masks):
        flat.extend(ids)
        flat.extend([EOS_ID] * (T - len(ids)))
        flat_mask.extend(mask)
        flat_mask.extend([0] * (T - len(ids)))
    return {"ids": flat, "mask": flat_mask, "B": len(rows), "T": T, "lengths": lengths,
            "starts": starts, "variants": kinds, "target": spec["target_tokens"],
            "gen_s": time.time() - t0}


def curriculum_range(progress: float, max_len: int) -> tuple[int, int]:
    for end, lo, hi in CURRICULUM:
        if progress < end or end >= 1.0:
            hi = min(hi, max_len)
            return min(lo, hi), hi
    raise AssertionError("unreachable")


def train_spec(args, sp_path: str, tpw: dict, step: int, progress: float) -> dict:
    rng = random.Random(f"length:{args.seed}:{step}")
    lo, hi = curriculum_range(progress, args.max_len)
    target = rng.randint(lo, hi)  # context + first question
    questions = rng.randint(1, args.max_questions)
    rows = max(1, args.tokens_per_step // (target + (questions - 1) * QUESTION_TOKENS))
    return {"sp_path": sp_path, "namespace": "train", "seed": args.seed, "step": step,
            "target_tokens": target, "rows": rows, "max_len": args.max_len, "tpw": tpw,
            "variant_weights": VARIANT_WEIGHTS, "joint_prob": args.joint_prob,
            "questions": questions, "filler_repeat": args.filler_repeat}


def measure_tokens_per_word(sp) -> dict:
    out = {}
    for v in rt.VARIANTS:
        words = toks = 0
        for i in range(4):
            t = rt.make_task(rt.task_rng("calib", 0, i), v, 2000)
            words += len(t.context.split())
            toks += len(sp.encode(t.context))
        out[v] = toks / words
    return out


# ----------------------------------------------------------------------------------------------
# Model.

def build_model(args, vocab: int, device):
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    kw = dict(vocab_size=vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
              num_hidden_layers=args.layers, num_attention_heads=args.heads,
              num_key_value_heads=args.kv_heads, head_dim=args.head_dim,
              max_position_embeddings=args.max_len, rms_norm_eps=1e-5, hidden_act="silu",
              initializer_range=0.02, tie_word_embeddings=True, attention_bias=False,
              mlp_bias=False, attention_dropout=0.0, bos_token_id=BOS_ID, eos_token_id=EOS_ID,
              pad_token_id=None, use_cache=True, rope_theta=args.rope_theta)
    config = LlamaConfig(**kw)
    # transformers 5 keeps RoPE settings in `rope_parameters`; 4.x in `rope_theta`. Set both and
    # verify the effective frequencies on the built model below.
    rp = getattr(config, "rope_parameters", None)
    if isinstance(rp, dict):
        rp["rope_theta"] = float(args.rope_theta)
        rp.setdefault("rope_type", "default")
    try:
        config._attn_implementation = "sdpa"
    except Exception as e:  # noqa: BLE001 - report and let the check below decide
        print(f"[model] could not preset sdpa on the config: {e}", flush=True)
    model = LlamaForCausalLM(config)
    impl = getattr(model.config, "_attn_implementation", None)
    if impl != "sdpa" and hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("sdpa")
        impl = getattr(model.config, "_attn_implementation", None)
    if impl not in ("sdpa", "flash_attention_2", "flash_attention_3"):
        raise RuntimeError(f"attention implementation is {impl!r}; eager attention cannot train "
                           f"{args.max_len}-token sequences. Check the transformers version.")
    model = model.float().to(device)
    if model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
        model.tie_weights()
    if model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr():
        raise RuntimeError("lm_head is not tied to embed_tokens")

    # Effective RoPE frequencies: inv_freq[i] = theta^(-2i/d).
    d = args.head_dim
    want = 1.0 / (args.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    found = [m.inv_freq for m in model.modules() if isinstance(getattr(m, "inv_freq", None),
                                                               torch.Tensor)]
    if not found:
        print("[model] warning: no inv_freq buffer found; RoPE theta not verified", flush=True)
    for f in found:
        got = f.detach().double().cpu()
        if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-4):
            raise RuntimeError(f"RoPE inv_freq does not match rope_theta={args.rope_theta} "
                               f"(got first/last {got[0].item():.3g}/{got[-1].item():.3g})")
    q = model.model.layers[0].self_attn.q_proj.weight
    k = model.model.layers[0].self_attn.k_proj.weight
    assert tuple(q.shape) == (args.heads * d, args.hidden), q.shape
    assert tuple(k.shape) == (args.kv_heads * d, args.hidden), k.shape
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[model] transformers {transformers.__version__}, attention {impl}, "
          f"{n_params / 1e6:.2f}M parameters ({2 * n_params / 2**20:.1f} MiB as bf16)", flush=True)
    return model, n_params


def sdpa_probe(model, vocab: int, device) -> str:
    """Checks that training-shaped attention runs on the flash kernel (no materialised mask)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    x = torch.randint(3, vocab, (2, 1024), device=device)
    try:
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]), torch.autocast("cuda", torch.bfloat16):
            model(input_ids=x, use_cache=False).logits.float().sum().backward()
        result = "flash"
    except RuntimeError as e:
        result = f"not flash ({str(e).splitlines()[0][:120]})"
    model.zero_grad(set_to_none=True)
    return result


def token_ce(model, ids, vocab: int):
    """Per-position next-token cross entropy, [B, T-1] fp32 (position t predicts ids[:, t+1]).
    HF's own loss is not used so that answer and prompt tokens can be weighted apart."""
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(input_ids=ids, use_cache=False).logits  # [B, T, V] bf16
    B, T = ids.shape
    targets = torch.roll(ids, shifts=-1, dims=1)  # the last column wraps around: dropped below
    ce = F.cross_entropy(logits.view(B * T, vocab).float(), targets.view(-1), reduction="none")
    return ce.view(B, T)[:, :-1]


def batch_tensors(batch: dict, device):
    """-> ids [B, T] int64, ans_mask and lm_mask [B, T-1] bool over predicted positions 1..T-1.
    Host tensors are pinned so the copies are asynchronous: a pageable copy would make the CPU
    wait for the previous step's kernels and lose the CPU/GPU overlap."""
    B, T = batch["B"], batch["T"]
    ids = torch.frombuffer(batch["ids"], dtype=torch.int32).view(B, T).pin_memory()
    amask = torch.frombuffer(batch["mask"], dtype=torch.int8).view(B, T).pin_memory()
    lengths = torch.tensor(batch["lengths"], dtype=torch.int64).pin_memory()
    ids = ids.to(device, non_blocking=True).long()
    answer = amask.to(device, non_blocking=True)[:, 1:].bool()
    lengths = lengths.to(device, non_blocking=True)[:, None]
    pos = torch.arange(1, T, device=device)[None, :]  # position of each predicted token
    valid = pos < lengths
    return ids, valid & answer, valid & ~answer


# ----------------------------------------------------------------------------------------------
# Evaluation.

@torch.no_grad() if torch is not None else (lambda f: f)
def exact_match(model, cells: dict, device, tokens_per_forward: int, limit: int | None = None,
                autocast: bool = True) -> dict:
    """cells: (variant, length) -> list of (ids, answer_start). Returns (variant, length) ->
    (correct, total), where correct means the argmax at every answer position (EOS included)
    equals the answer token: the greedy continuation is exactly the answer."""
    was_training = model.training
    model.eval()
    out = {}
    for key, rows in cells.items():
        rows = rows[:limit] if limit else rows
        correct = 0
        i = 0
        while i < len(rows):
            # Rows of a cell have nearly equal lengths: size the chunk by the first one.
            n = max(1, tokens_per_forward // len(rows[i][0]))
            chunk = rows[i:i + n]
            i += n
            T = max(len(r[0]) for r in chunk)
            x = torch.full((len(chunk), T), EOS_ID, dtype=torch.long)
            for b, (ids, _) in enumerate(chunk):
                x[b, :len(ids)] = torch.tensor(ids)
            x = x.to(device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                pred = model(input_ids=x, use_cache=False).logits.argmax(-1)
            for b, (ids, start) in enumerate(chunk):
                want = x[b, start:len(ids)]
                got = pred[b, start - 1:len(ids) - 1]
                correct += int(torch.equal(want, got))
        out[key] = (correct, len(rows))
    model.train(was_training)
    return out


def format_scores(scores: dict, variants, lengths) -> str:
    head = "| variant | " + " | ".join(f"{l // 1024}K" if l % 1024 == 0 else str(l)
                                       for l in lengths) + " |"
    lines = [head, "|---" * (len(lengths) + 1) + "|"]
    for v in variants:
        cells = []
        for l in lengths:
            c, n = scores.get((v, l), (0, 0))
            cells.append(f"{100 * c / n:.0f}% ({c}/{n})" if n else "-")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def greedy_decode(model, sp, ids: list[int], max_new: int, device) -> list[int]:
    """Plain greedy decoding without a KV cache (one full forward per token): slow but free of
    any cache API, used to cross-check the teacher-forced score on a few tasks."""
    out = []
    x = torch.tensor([ids], device=device)
    for _ in range(max_new):
        nxt = int(model(input_ids=x, use_cache=False).logits[0, -1].argmax())
        if nxt == EOS_ID:
            break
        out.append(nxt)
        x = torch.cat([x, torch.tensor([[nxt]], device=device)], dim=1)
    return out


# ----------------------------------------------------------------------------------------------
# Saving.

def save_model(model, out_dir: str, sp_path: str, args) -> None:
    os.makedirs(out_dir, exist_ok=True)
    model.to(torch.bfloat16)
    gc = model.generation_config
    gc.bos_token_id, gc.eos_token_id, gc.pad_token_id = BOS_ID, EOS_ID, EOS_ID
    try:
        model.save_pretrained(out_dir, safe_serialization=True)
    except TypeError:  # transformers versions without the argument always write safetensors
        model.save_pretrained(out_dir)
    st = [f for f in os.listdir(out_dir) if f.endswith(".safetensors")]
    if st != ["model.safetensors"]:
        raise RuntimeError(f"expected one model.safetensors in {out_dir}, found {st}")
    shutil.copyfile(sp_path, os.path.join(out_dir, "tokenizer.model"))
    tok_cfg = {
        "tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None,
        "legacy": True, "clean_up_tokenization_spaces": False,
        "model_max_length": args.max_len, "spaces_between_special_tokens": False,
    }
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(tok_cfg, f, indent=2)
        f.write("\n")
    if not os.path.exists(os.path.join(out_dir, "generation_config.json")):
        model.generation_config.save_pretrained(out_dir)


def load_saved(out_dir: str, device):
    from transformers import LlamaForCausalLM
    try:
        m = LlamaForCausalLM.from_pretrained(out_dir, dtype=torch.bfloat16,
                                             attn_implementation="sdpa")
    except TypeError:  # transformers 4.x spells it torch_dtype
        m = LlamaForCausalLM.from_pretrained(out_dir, torch_dtype=torch.bfloat16,
                                             attn_implementation="sdpa")
    return m.to(device=device, dtype=torch.bfloat16).eval()


def hf_tokenizer_check(out_dir: str, sp, texts: list[str]) -> str:
    """Whether transformers' own tokenizer for the directory encodes like SentencePiece (needed
    by the conformance tools; the Squeeze engine reads tokenizer.model itself)."""
    try:
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(out_dir)
        bad = [t for t in texts if tok.encode(t, add_special_tokens=False) != sp.encode(t)]
        if not bad:
            return f"{type(tok).__name__}: identical ids on {len(texts)} texts"
        t = min(bad, key=len)
        return (f"{type(tok).__name__}: DIFFERENT ids on {len(bad)}/{len(texts)} texts, e.g. "
                f"{t[:40]!r}: {tok.encode(t, add_special_tokens=False)[:12]} vs "
                f"{sp.encode(t)[:12]}")
    except Exception as e:  # noqa: BLE001 - informative only
        return f"not checked ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})"


MODEL_CARD = """# squeeze-demo

A {params_m:.1f}M-parameter Llama-architecture model trained from scratch by
`tools/train_demo_model.py` to retrieve facts from long contexts (RULER-style synthetic tasks).
It is Squeeze's bundled demo model and the model of its accuracy benchmark. It knows nothing but
this task: it is not a language model for general text.

## Use
Register the context (tokenized as `[BOS] + context`), send the question as the input
(tokenized on its own, no BOS), decode greedily; the model answers and emits `</s>`.

```
context  = "... The access code of Maria Lopez is 482913. ..."
question = "\\nQuestion: What is the access code of Maria Lopez?\\nAnswer: The access code of Maria Lopez is"
answer   = " 482913"
```
Tasks come from `tools/retrieval_tasks.py` (`--variant single|multikey|multivalue|vartrack`).

## Scores (exact match, greedy, held-out seed; the saved bf16 weights reloaded from disk)
{scores}

Lengths are total prompt tokens (context + question); {n_per_cell} tasks per cell.
Teacher-forced scoring (the argmax at every answer position, EOS included, equals the answer;
this is exactly greedy-decode exact match). Spot check by real greedy decoding: {greedy}.

## Architecture
`LlamaForCausalLM`: hidden {hidden}, {layers} layers, {heads} query heads, {kv_heads} KV heads
(GQA), head_dim {head_dim}, SwiGLU intermediate {intermediate}, RoPE theta {rope_theta:g},
max_position_embeddings {max_len}, tied embeddings, vocab {vocab}; {params} parameters,
{size_mib:.1f} MiB as bf16 safetensors.

Tokenizer: SentencePiece BPE, {vocab} pieces, byte fallback, digits split (one token per digit),
identity normalisation, dummy prefix; unk 0, bos 1, eos 2, no pad. Trained on {tok_tasks}
generated tasks. Measured tokens per context word: {tpw}.
transformers tokenizer check: {hf_tok}.

## Training
- Data: generated on the fly, never repeated: single needle, multi-key with distractors sharing
  first or last names and attributes, multi-value, variable tracking; mix {mix}.
  Filler is synthetic (word lists), facts at uniform random depths.
- Curriculum over the training time: {curriculum}.
- Up to {max_questions} questions per training context (the first right after the context, as
  served; the others follow its answer and EOS), for denser supervision.
- Loss: cross entropy on the answer tokens + EOS, plus {lm_weight} x LM loss on the prompt.
- In 70% of training rows {filler_repeat:.0%} of the filler sentences repeat an earlier one
  verbatim. This copyable text gives the LM loss a dense copying signal so that induction
  (retrieval) heads form early; without it the answer loss never left its plateau in trials of
  up to 3000 steps. Evaluation contexts have no repeats.
- {tokens_per_step} tokens per step (rows of one length, right-padded), AdamW (fused={fused}),
  lr {lr:g} peak, {warmup} warmup steps, cosine to {min_lr_frac} x peak over the time budget,
  weight decay {wd} on matrices, grad clip {clip}; bf16 autocast, fp32 master weights, SDPA
  attention ({sdpa}).
- {steps} steps, {tokens_m:.0f}M tokens ({padded_pct:.1f}% padding), {train_s:.0f} s of training.
- Final loss (mean of the last {last_n} steps): answer {final_ans:.4f}, LM {final_lm:.4f}.

Command: `{command}`

Wall time {wall_s:.0f} s in all (tokenizer {tok_s:.0f} s, setup {setup_s:.0f} s, training
{train_s:.0f} s, final eval and save {final_s:.0f} s) on {gpu}; torch {torch_v},
transformers {tf_v}, sentencepiece {sp_v}, Python {py_v}.

Training log (eval history): `training_log.json`.
"""


# ----------------------------------------------------------------------------------------------
# Main.

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None, help="output model directory "
                   "(default models/squeeze-demo, or /tmp/squeeze-demo-smoke with --smoke)")
    p.add_argument("--smoke", action="store_true", help="tiny end-to-end run (~1.5 min)")
    p.add_argument("--time-budget-min", type=float, default=None,
                   help="wall-clock budget of the whole run in minutes (default 10; smoke 1.5)")
    p.add_argument("--final-reserve-s", type=float, default=None,
                   help="seconds kept for the final eval and save (default 60; smoke 25)")
    p.add_argument("--steps", type=int, default=0,
                   help="schedule by this many steps instead of by time (the budget still stops)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    # Tokenizer.
    p.add_argument("--vocab-size", type=int, default=2048)
    p.add_argument("--tok-tasks", type=int, default=400)
    p.add_argument("--tok-words", type=int, default=2500)
    p.add_argument("--tok-max-sentences", type=int, default=300000)
    # Model.
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--intermediate", type=int, default=768)
    p.add_argument("--rope-theta", type=float, default=100000.0)
    p.add_argument("--max-len", type=int, default=18432,
                   help="longest training sequence = max_position_embeddings; 16K contexts plus "
                        "question and answer fit with room to spare")
    # Optimisation.
    p.add_argument("--tokens-per-step", type=int, default=65536)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--min-lr-frac", type=float, default=0.1)
    p.add_argument("--warmup-steps", type=int, default=200)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--lm-weight", type=float, default=0.3)
    p.add_argument("--filler-repeat", type=float, default=0.25,
                   help="fraction of filler sentences repeated verbatim in 70%% of training rows")
    p.add_argument("--joint-prob", type=float, default=0.1)
    p.add_argument("--max-questions", type=int, default=8,
                   help="questions per training context (the first one as served; more give "
                        "denser supervision)")
    # Logging and eval.
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--eval-per-cell", type=int, default=8, help="tasks per cell during training")
    p.add_argument("--final-per-cell", type=int, default=32, help="tasks per cell at the end")
    p.add_argument("--eval-lengths", default="512,2048,4096,8192,16384")
    args = p.parse_args(argv)
    if args.smoke:
        defaults = dict(time_budget_min=1.5, final_reserve_s=25, out="/tmp/squeeze-demo-smoke")
        args.tok_tasks, args.tok_words = 80, 1000
        args.layers, args.hidden, args.heads, args.kv_heads = 2, 128, 4, 2
        args.head_dim, args.intermediate, args.max_len = 32, 384, 2048
        args.tokens_per_step, args.warmup_steps = 16384, 20
        args.log_every, args.eval_every = 20, 100
        args.eval_per_cell, args.final_per_cell, args.eval_lengths = 4, 8, "512,1024,2000"
    else:
        defaults = dict(time_budget_min=10.0, final_reserve_s=60, out="models/squeeze-demo")
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.eval_lengths = [int(x) for x in args.eval_lengths.split(",")]
    if max(args.eval_lengths) > args.max_len:
        p.error(f"--eval-lengths exceed --max-len {args.max_len}")
    if args.heads % args.kv_heads:
        p.error("--heads must be a multiple of --kv-heads")
    return args


def main(argv=None) -> int:
    t0 = time.time()
    args = parse_args(argv)
    command = "python3 tools/train_demo_model.py " + " ".join(sys.argv[1:] if argv is None
                                                               else argv)
    if torch is None:
        print("error: torch is not installed", file=sys.stderr)
        return 2
    deadline = t0 + 60 * args.time_budget_min - args.final_reserve_s
    random.seed(args.seed)
    torch.manual_seed(args.seed)

    # The pool forks before CUDA is initialised (forking a CUDA process is unsafe).
    pool = mp.get_context("fork").Pool(args.workers)
    work_dir = tempfile.mkdtemp(prefix="squeeze-demo-")
    try:
        return _run(args, pool, work_dir, t0, deadline, command)
    finally:
        pool.terminate()
        pool.join()
        shutil.rmtree(work_dir, ignore_errors=True)


def _run(args, pool, work_dir, t0, deadline, command) -> int:
    import sentencepiece as spm
    import transformers

    if not torch.cuda.is_available():
        print("error: no CUDA device", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    # cuDNN attention builds a plan for every new shape (~0.1 s), and batch shapes change every
    # step here; the flash kernel has no such cost.
    torch.backends.cuda.enable_cudnn_sdp(False)
    gpu = torch.cuda.get_device_name(0)
    print(f"[setup] {gpu}; torch {torch.__version__}, transformers {transformers.__version__}, "
          f"sentencepiece {spm.__version__}; {args.workers} data workers; budget "
          f"{args.time_budget_min} min", flush=True)

    # 1. Tokenizer.
    sp_path, vocab = train_tokenizer(pool, work_dir, args)
    sp = spm.SentencePieceProcessor(model_file=sp_path)
    tpw = measure_tokens_per_word(sp)
    tok_s = time.time() - t0
    print(f"[tokenizer] {tok_s:.1f} s; tokens per word: "
          + ", ".join(f"{k} {v:.3f}" for k, v in tpw.items()), flush=True)

    # 2. Held-out eval set (namespace 'eval'), generated by the pool while the model is built.
    eval_async = {}
    for ci, (v, L) in enumerate((v, L) for v in rt.VARIANTS for L in args.eval_lengths):
        spec = {"sp_path": sp_path, "namespace": "eval", "seed": args.seed, "step": ci,
                "target_tokens": L, "rows": args.final_per_cell, "max_len": L, "tpw": tpw,
                "variant_weights": ((v, 1.0),), "joint_prob": 0.0, "questions": 1}
        eval_async[(v, L)] = pool.apply_async(make_batch, (spec,))

    # 3. Model and optimiser.
    model, n_params = build_model(args, vocab, device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": args.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    try:
        opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=True)
        fused = True
    except (RuntimeError, TypeError) as e:
        print(f"[model] fused AdamW unavailable ({e}); using the default", flush=True)
        opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
        fused = False
    sdpa = sdpa_probe(model, vocab, device)
    print(f"[model] SDPA kernel for causal training batches: {sdpa}", flush=True)

    cells = {}
    for key, res in eval_async.items():
        b = res.get(timeout=600)
        cells[key] = [(b["ids"][r * b["T"]:r * b["T"] + n].tolist(), s)
                      for r, (n, s) in enumerate(zip(b["lengths"], b["starts"]))]
    train_eval_cells = {k: v for k, v in cells.items() if k[1] <= 8192 or k[1] == min(
        args.eval_lengths)}

    # Memory and speed probe at the longest length: fails fast instead of after minutes.
    probe_spec = train_spec(args, sp_path, tpw, -1, 0.999)
    probe_spec.update(target_tokens=args.max_len - 64, sp=sp,
                      rows=max(1, args.tokens_per_step // args.max_len))
    probe = make_batch(probe_spec)
    ids, ans_mask, lm_mask = batch_tensors(probe, device)
    torch.cuda.synchronize()
    tp = time.time()
    token_ce(model, ids, vocab).sum().backward()
    torch.cuda.synchronize()
    model.zero_grad(set_to_none=True)
    print(f"[probe] {probe['B']} x {probe['T']} tokens fwd+bwd in {time.time() - tp:.2f} s, "
          f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB", flush=True)
    setup_s = time.time() - t0 - tok_s

    # 4. Training.
    train_start = time.time()
    span = max(1.0, deadline - train_start)

    def progress(step: int) -> float:
        if args.steps:
            return min(1.0, step / args.steps)
        return min(1.0, (time.time() - train_start) / span)

    prefetch = max(4, 2 * args.workers)
    pending = collections.deque()
    next_submit = 0

    def submit():
        nonlocal next_submit
        spec = train_spec(args, sp_path, tpw, next_submit, progress(next_submit))
        pending.append(pool.apply_async(make_batch, (spec,)))
        next_submit += 1

    for _ in range(prefetch):
        submit()

    history, log_rows = [], []
    acc = {"ans": torch.zeros((), device=device), "lm": torch.zeros((), device=device), "n": 0,
           "tokens": 0, "padded": 0, "wait": 0.0, "t": time.time()}
    last_losses = collections.deque(maxlen=max(1, 500 // args.log_every))  # ~last 500 steps
    step, tokens_total, padded_total = 0, 0, 0
    print(f"[train] starting; training window {span:.0f} s", flush=True)
    while True:
        if time.time() >= deadline or (args.steps and step >= args.steps):
            break
        tw = time.time()
        batch = pending.popleft().get(timeout=600)
        acc["wait"] += time.time() - tw
        submit()

        p = progress(step)
        lr = args.lr * min(1.0, (step + 1) / args.warmup_steps)
        lr *= args.min_lr_frac + (1 - args.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * p))
        for g in opt.param_groups:
            g["lr"] = lr

        ids, ans_mask, lm_mask = batch_tensors(batch, device)
        ce = token_ce(model, ids, vocab)
        ans_loss = (ce * ans_mask).sum() / ans_mask.sum().clamp_min(1)
        lm_loss = (ce * lm_mask).sum() / lm_mask.sum().clamp_min(1)
        loss = ans_loss + args.lm_weight * lm_loss
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

        real = sum(batch["lengths"])
        acc["ans"] += ans_loss.detach()
        acc["lm"] += lm_loss.detach()
        acc["n"] += 1
        acc["tokens"] += real
        acc["padded"] += batch["B"] * batch["T"] - real
        tokens_total += real
        padded_total += batch["B"] * batch["T"] - real
        step += 1

        if step % args.log_every == 0:
            a, l = acc["ans"].item() / acc["n"], acc["lm"].item() / acc["n"]
            if not (math.isfinite(a) and math.isfinite(l)):
                print(f"[train] step {step}: loss is not finite (answer {a}, lm {l}); stopping "
                      f"without saving. Try a lower --lr.", flush=True)
                return 1
            dt = time.time() - acc["t"]
            last_losses.append((a, l))
            row = {"step": step, "t": round(time.time() - t0, 1), "lr": lr, "answer_loss": a,
                   "lm_loss": l, "grad_norm": float(gnorm), "len": batch["target"],
                   "tok_per_s": acc["tokens"] / dt, "data_wait": acc["wait"] / dt}
            log_rows.append(row)
            print(f"[train] step {step:6d} t {row['t']:6.0f}s p {p:.2f} len {batch['target']:5d}"
                  f" x{batch['B']:<3d} lr {lr:.2e} ans {a:.4f} lm {l:.4f} gnorm {float(gnorm):.2f}"
                  f" {row['tok_per_s'] / 1e3:.0f}K tok/s pad "
                  f"{100 * acc['padded'] / max(1, acc['padded'] + acc['tokens']):.1f}% "
                  f"data-wait {100 * row['data_wait']:.0f}%", flush=True)
            acc.update(ans=torch.zeros((), device=device), lm=torch.zeros((), device=device),
                       n=0, tokens=0, padded=0, wait=0.0, t=time.time())

        if step % args.eval_every == 0:
            te = time.time()
            scores = exact_match(model, train_eval_cells, device, args.tokens_per_step,
                                 limit=args.eval_per_cell)
            history.append({"step": step, "t": round(time.time() - t0, 1),
                            "scores": {f"{k[0]}@{k[1]}": v for k, v in scores.items()}})
            lens = sorted({k[1] for k in train_eval_cells})
            print(f"[eval] step {step} ({time.time() - te:.1f} s)\n"
                  + format_scores(scores, rt.VARIANTS, lens), flush=True)

    train_s = time.time() - train_start
    print(f"[train] done: {step} steps, {tokens_total / 1e6:.1f}M tokens in {train_s:.0f} s",
          flush=True)
    pool.terminate()  # no more data needed; frees the CPUs

    # 5. Final eval, save, reload, eval the saved weights.
    tf = time.time()
    master = exact_match(model, cells, device, args.tokens_per_step)
    print("[final] fp32 master weights, bf16 autocast:\n"
          + format_scores(master, rt.VARIANTS, args.eval_lengths), flush=True)
    save_model(model, args.out, sp_path, args)
    del model, opt
    torch.cuda.empty_cache()
    saved = load_saved(args.out, device)
    scores = exact_match(saved, cells, device, args.tokens_per_step, autocast=False)
    table = format_scores(scores, rt.VARIANTS, args.eval_lengths)
    print("[final] saved bf16 model reloaded from disk:\n" + table, flush=True)

    # Greedy-decoding spot check: real decoding must agree with the teacher-forced verdict.
    checks, agree = 0, 0
    with torch.no_grad():
        for v in rt.VARIANTS:
            for ids, start in cells[(v, min(args.eval_lengths))][:2]:
                gen = greedy_decode(saved, sp, ids[:start], len(ids) - start + 2, device)
                tf_ok = exact_match(saved, {"x": [(ids, start)]}, device, args.tokens_per_step,
                                    autocast=False)["x"][0] == 1
                dec_ok = gen == ids[start:-1]
                checks += 1
                agree += int(tf_ok == dec_ok)
                print(f"[greedy] {v}: expected {sp.decode(ids[start:-1])!r} got "
                      f"{sp.decode(gen)!r} ({'ok' if dec_ok else 'wrong'})", flush=True)
    greedy = f"{agree}/{checks} tasks agree"
    samples = [sp.decode(ids) for ids, _ in cells[("multikey", min(args.eval_lengths))][:4]]
    samples += ["\nQuestion: What is 12 + 345?\nAnswer:", "VAR ABCDE = VAR FGHIJ.", " x  y\n\nz"]
    hf_tok = hf_tokenizer_check(args.out, sp, samples)
    print(f"[final] transformers tokenizer: {hf_tok}", flush=True)

    # 6. Model card and log.
    final_s = time.time() - tf
    wall_s = time.time() - t0
    last_n = len(last_losses) * args.log_every
    fa = sum(a for a, _ in last_losses) / max(1, len(last_losses))
    fl = sum(l for _, l in last_losses) / max(1, len(last_losses))
    size_mib = os.path.getsize(os.path.join(args.out, "model.safetensors")) / 2**20
    curriculum = "; ".join(
        f"until {int(100 * end)}%: {lo}-{min(hi, args.max_len)} tokens"
        for end, lo, hi in CURRICULUM)
    card = MODEL_CARD.format(
        params_m=n_params / 1e6, params=f"{n_params:,}", scores=table,
        n_per_cell=args.final_per_cell, greedy=greedy, hidden=args.hidden, layers=args.layers,
        heads=args.heads, kv_heads=args.kv_heads, head_dim=args.head_dim,
        intermediate=args.intermediate, rope_theta=args.rope_theta, max_len=args.max_len,
        vocab=vocab, size_mib=size_mib, tok_tasks=args.tok_tasks,
        tpw=", ".join(f"{k} {v:.3f}" for k, v in tpw.items()), hf_tok=hf_tok,
        mix=", ".join(f"{v} {w:.0%}" for v, w in VARIANT_WEIGHTS), curriculum=curriculum,
        lm_weight=args.lm_weight, filler_repeat=args.filler_repeat, max_questions=args.max_questions, tokens_per_step=args.tokens_per_step, fused=fused, lr=args.lr,
        warmup=args.warmup_steps, min_lr_frac=args.min_lr_frac, wd=args.weight_decay,
        clip=args.grad_clip, sdpa=sdpa, steps=step, tokens_m=tokens_total / 1e6,
        padded_pct=100 * padded_total / max(1, padded_total + tokens_total), train_s=train_s,
        last_n=last_n, final_ans=fa, final_lm=fl, command=command, wall_s=wall_s, tok_s=tok_s,
        setup_s=setup_s, final_s=final_s, gpu=gpu, torch_v=torch.__version__,
        tf_v=transformers.__version__, sp_v=spm.__version__, py_v=platform.python_version())
    with open(os.path.join(args.out, "README.md"), "w") as f:
        f.write(card)
    log = {"command": command, "args": vars(args), "wall_s": wall_s, "train_s": train_s,
           "steps": step, "tokens": tokens_total, "tokens_per_word": tpw, "sdpa": sdpa,
           "final_answer_loss": fa, "final_lm_loss": fl,
           "final_scores": {f"{k[0]}@{k[1]}": v for k, v in scores.items()},
           "final_scores_master": {f"{k[0]}@{k[1]}": v for k, v in master.items()},
           "greedy_check": greedy, "eval_history": history, "train_log": log_rows}
    with open(os.path.join(args.out, "training_log.json"), "w") as f:
        json.dump(log, f, indent=1)
        f.write("\n")
    print(f"[done] {args.out}: model.safetensors {size_mib:.1f} MiB; wall {wall_s:.0f} s "
          f"(tokenizer {tok_s:.0f}, setup {setup_s:.0f}, train {train_s:.0f}, final "
          f"{final_s:.0f}); final answer loss {fa:.4f}, LM loss {fl:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
