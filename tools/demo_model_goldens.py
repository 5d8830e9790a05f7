#!/usr/bin/env python3
"""Records Hugging Face transformers' logits for the bundled demo model, so that
tests/cpu/demo_model_conformance_test.cc can check that our engine computes the same function.

Run where torch, transformers and sentencepiece are installed (no network needed):
    python3 tools/demo_model_goldens.py --model models/squeeze-demo \
        --tasks tests/data/demo_tasks.jsonl --out tests/data/golden/squeeze-demo.json

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

    import sentencepiece
    import torch
    import transformers

    sp = sentencepiece.SentencePieceProcessor(model_file=os.path.join(args.model, "tokenizer.model"))
    model = transformers.AutoModelForCausalLM.from_pretrained(
        args.model, local_files_only=True, dtype=torch.float32, attn_implementation="eager")
    model = model.float().eval()
    cases = []
    with open(args.tasks, encoding="utf-8") as f:
        tasks = [json.loads(line) for line in f if line.strip()][: args.n]
    with torch.no_grad():
        for i, task in enumerate(tasks):
            context = [sp.bos_id()] + sp.encode(task["context"])
            question = sp.encode(task["question"])
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
