#!/usr/bin/env bash
# End to end through the gRPC server: register one long context, then time Generate with dense
# and squeezed attention at batch 1 and 8 (concurrent clients), and the time to first token of
# a ~1K-token input. Default: the Llama-3-8B shape with random weights on the GPU and the demo
# model's tokenizer (text in, ids out; generated ids beyond its vocabulary render as nothing).
#   bench/run_server_e2e.sh BIN_DIR [CONTEXT_REPEATS]
# BIN_DIR holds squeeze-server and squeeze-cli. The context is the demo document repeated
# CONTEXT_REPEATS times (3,227 tokens each; default 35 = 112,945 tokens).
# SERVER_ARGS replaces the model arguments (e.g. "--model=models/squeeze-demo --device=cpu").
set -euo pipefail
BIN=${1:?usage: bench/run_server_e2e.sh BIN_DIR [CONTEXT_REPEATS]}
REPEATS=${2:-35}
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEMO=$ROOT/models/squeeze-demo
SERVER_ARGS=${SERVER_ARGS:-"--model=$ROOT/bench/configs/llama3-8b --random_weights --tokenizer=$DEMO"}
MAX_TOKENS=${MAX_TOKENS:-64}
WORK=$(mktemp -d)
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; rm -rf "$WORK"' EXIT

# shellcheck disable=SC2086
"$BIN/squeeze-server" $SERVER_ARGS --address=127.0.0.1:0 --port_file="$WORK/port" \
  --metrics_address= --prefill_chunk=8192 --max_step_tokens=8192 --log_level=warn &
PID=$!
for _ in $(seq 1 600); do [ -s "$WORK/port" ] && break; sleep 0.1; done
[ -s "$WORK/port" ] || { echo "server did not start"; exit 1; }
SERVER=127.0.0.1:$(cat "$WORK/port")
CLI=("$BIN/squeeze-cli" --server="$SERVER")

for _ in $(seq 1 "$REPEATS"); do cat "$DEMO/demo_document.txt"; done > "$WORK/context.txt"
"${CLI[@]}" register big --file="$WORK/context.txt"
cp "$DEMO/demo_question.txt" "$WORK/question.txt"
# ~1K tokens of input: the question after part of the document.
head -c 4000 "$DEMO/demo_document.txt" > "$WORK/long_input.txt"
cat "$DEMO/demo_question.txt" >> "$WORK/long_input.txt"

# One Generate; prints "[MODE] ... ttft=...s total=...s" (squeeze-cli --stats).
gen() {  # gen MODE_ARGS... ; input from $INPUT_ARGS
  # shellcheck disable=SC2086
  "${CLI[@]}" generate --context=big $INPUT_ARGS --max_tokens="$MAX_TOKENS" --ignore_eos \
    --temperature=0 "$@" 2>&1 >/dev/null | grep -E '^\['
}
# Time per output token from a stats line: (total - ttft) / (completion - 1).
tpot() {
  sed -E 's/.*completion=([0-9]+).*kv_budget=([0-9.]+) ttft=([0-9.]+)s total=([0-9.]+)s.*/\1 \2 \3 \4/' |
    awk '{printf "ttft %.1f ms, %.2f ms per output token, kv_budget %.3f\n", 1e3*$3, 1e3*($4-$3)/($1-1), $2}'
}
INPUT_ARGS="--input_file=$WORK/question.txt"
for mode in "--mode=dense" "--mode=squeezed --budget=0.1" "--mode=squeezed --budget=0.05"; do
  gen $mode > /dev/null  # warm-up
  echo "batch 1, $mode: $(gen $mode | tpot)"
done
for mode in "--mode=dense" "--mode=squeezed --budget=0.1"; do
  clients=()
  for i in $(seq 1 8); do
    gen $mode > "$WORK/b$i.txt" &
    clients+=($!)
  done
  wait "${clients[@]}"  # not the server
  echo "batch 8 (8 concurrent clients), $mode:"
  for i in $(seq 1 8); do tpot < "$WORK/b$i.txt"; done | sort | sed 's/^/  /'
done
INPUT_ARGS="--input_file=$WORK/long_input.txt"
MAX_TOKENS=1
for mode in "--mode=dense" "--mode=squeezed --budget=0.1"; do
  gen $mode > /dev/null
  echo "1K-token input, $mode: $(gen $mode | sed -E 's/.*query=([0-9]+).*ttft=([0-9.]+)s.*/query \1 tokens, ttft \2 s/')"
done
