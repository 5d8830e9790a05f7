#!/usr/bin/env python3
"""Records Hugging Face transformers' logits for a bundled model, so that
tests/cpu/demo_model_conformance_test.cc can check that our engine computes the same function.

Run where torch, transformers and sentencepiece or tokenizers are installed (no network needed):
    python3 tools/demo_model_goldens.py --model models/squeeze-demo \
        --tasks tests/data/demo_tasks.jsonl --out tests/data/golden/squeeze-demo.json
    python3 tools/demo_model_goldens.py --model models/squeeze-code \
        --tasks tests/data/code_model_tasks.jsonl --out tests/data/golden/squeeze-code.json

The tokenizer is the model's tokenizer.model (SentencePiece) or tokenizer.json (`tokenizers`);
the task texts are stored with the ids, so the test checks our tokenizer too.

For the first --n tasks it tokenizes exactly as the server does ([BOS] + context, then the
question without BOS), runs the model in fp32 (the bf16 weights upcast, eager attention), and
stores the full logits of the last 4 positions, the argmax and top-2 gap of every question
position, and 8 greedy tokens.
"""
import argparse
import json
import os
import sys


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="models/squeeze-demo")
    p.add_argument("--tasks", default="tests/data/demo_tasks.jsonl")
    p.add_argument("--out", default="tests/data/golden/squeeze-demo.json")
    p.add_argument("--n", type=int, default=2)
    args = p.parse_args()

    import torch
    import transformers

    if os.path.exists(os.path.join(args.model, "tokenizer.model")):
        import sentencepiece
        sp = sentencepiece.SentencePieceProcessor(
            model_file=os.path.join(args.model, "tokenizer.model"))
        bos, encode = sp.bos_id(), sp.encode
    else:
        import tokenizers
        bpe = tokenizers.Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
        with open(os.path.join(args.model, "config.json"), encoding="utf-8") as f:
            bos = json.load(f)["bos_token_id"]
        encode = lambda text: bpe.encode(text, add_special_tokens=False).ids  # noqa: E731
    model = transformers.AutoModelForCausalLM.from_pretrained(
        args.model, local_files_only=True, dtype=torch.float32, attn_implementation="eager")
    model = model.float().eval()
    cases = []
    with open(args.tasks, encoding="utf-8") as f:
        tasks = [json.loads(line) for line in f if line.strip()][: args.n]
    with torch.no_grad():
        for i, task in enumerate(tasks):
            context = [bos] + encode(task["context"])
            question = encode(task["question"])
            ids = context + question
            logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].float()
            top = torch.topk(logits[len(context):], 2, dim=-1)
            seq = list(ids)
            greedy = []
            for _ in range(8):
                row = model(input_ids=torch.tensor([seq]), use_cache=False).logits[0, -1]
                tok = int(row.argmax())
                greedy.append(tok)
                seq.append(tok)
            cases.append({
                "context_text": task["context"],
                "question_text": task["question"],
                "context_tokens": context,
                "question_tokens": question,
                "last_logits": [[round(v, 6) for v in row.tolist()] for row in logits[-4:]],
                "question_argmax": top.indices[:, 0].tolist(),
                "question_top2_gap": (top.values[:, 0] - top.values[:, 1]).tolist(),
                "greedy": greedy,
            })
            print(f"task {i}: {len(ids)} tokens, greedy {greedy}", flush=True)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"format": 1, "model": args.model, "transformers": transformers.__version__,
                   "torch": torch.__version__, "cases": cases}, f)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
