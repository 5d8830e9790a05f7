#!/usr/bin/env bash
# Accuracy benchmark through the real serving path: starts squeeze-server on the demo model,
# generates retrieval tasks with a seed the model never saw, runs bench/accuracy_bench.cc.
#   bench/run_accuracy.sh [BUILD] [N per length and variant] [token lengths...]
# Extra server flags: SERVER_FLAGS="--centroid_fraction=0.25" bench/run_accuracy.sh
set -euo pipefail
BUILD=${1:-build}
N=${2:-10}
shift 2 || true
LENGTHS=("$@")
[ ${#LENGTHS[@]} -gt 0 ] || LENGTHS=(4096 8192 16384)
VARIANTS=${VARIANTS:-"single multikey"}
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
MODEL=${MODEL:-$ROOT/models/squeeze-demo}
WORK=$(mktemp -d)
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; rm -rf "$WORK"' EXIT
"$BUILD/squeeze-server" --model="$MODEL" --address=127.0.0.1:0 --port_file="$WORK/port" \
  --log_level=warn --max_tokens_cap=64 --default_max_tokens=64 --metrics_address= ${SERVER_FLAGS:-} &
PID=$!
for _ in $(seq 1 1200); do [ -s "$WORK/port" ] && break; sleep 0.1; done
files=()
for len in "${LENGTHS[@]}"; do
  for v in $VARIANTS; do
    # ~1.25 tokens per word for the demo tokenizer; the question adds ~40 tokens.
    words=$(( (len - 64) * 100 / 126 ))
    python3 "$ROOT/tools/retrieval_tasks.py" --seed 9001 --n "$N" --words "$words" \
      --variant "$v" --out "$WORK/$v-$len.jsonl"
    files+=("$WORK/$v-$len.jsonl")
  done
done
tasks=$(IFS=,; echo "${files[*]}")
"$BUILD/accuracy-bench" --server="127.0.0.1:$(cat "$WORK/port")" --tasks="$tasks" ${BENCH_FLAGS:-}
