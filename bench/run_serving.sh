#!/usr/bin/env bash
# Serving benchmark through the gRPC server (bench/serving_bench.cc): N concurrent clients
# (CLIENTS, default 1,8,32,64) stream MAX_TOKENS tokens each, dense and squeezed, first against
# one long context, then against 4 contexts of a quarter of its length. Default server: the
# Llama-3-8B shape with random weights on the GPU and the demo model's tokenizer.
#   bench/run_serving.sh BIN_DIR [CONTEXT_REPEATS]
# BIN_DIR holds squeeze-server, squeeze-cli and serving-bench. The long context is the demo
# document repeated CONTEXT_REPEATS times (3,227 tokens each; default 39 = 125,853 tokens); each
# of the 4 contexts has a quarter of the repeats and its own first line (other content).
# SERVER_ARGS replaces the model arguments (e.g. "--model=models/squeeze-demo --device=cpu").
set -euo pipefail
BIN=${1:?usage: bench/run_serving.sh BIN_DIR [CONTEXT_REPEATS]}
REPEATS=${2:-39}
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEMO=$ROOT/models/squeeze-demo
SERVER_ARGS=${SERVER_ARGS:-"--model=$ROOT/bench/configs/llama3-8b --random_weights --tokenizer=$DEMO"}
CLIENTS=${CLIENTS:-1,8,32,64}
MODES=${MODES:-dense,squeezed:0.1}
MAX_TOKENS=${MAX_TOKENS:-64}
WORK=$(mktemp -d)
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; rm -rf "$WORK"' EXIT

# shellcheck disable=SC2086
"$BIN/squeeze-server" $SERVER_ARGS --address=127.0.0.1:0 --port_file="$WORK/port" \
  --metrics_address= --prefill_chunk=8192 --max_step_tokens=8192 --max_running=64 \
  --log_level=warn ${EXTRA_SERVER_ARGS:-} &
PID=$!
for _ in $(seq 1 600); do [ -s "$WORK/port" ] && break; sleep 0.1; done
[ -s "$WORK/port" ] || { echo "server did not start"; exit 1; }
SERVER=127.0.0.1:$(cat "$WORK/port")
CLI=("$BIN/squeeze-cli" --server="$SERVER")

for _ in $(seq 1 "$REPEATS"); do cat "$DEMO/demo_document.txt"; done > "$WORK/big.txt"
echo "== one context of $REPEATS demo documents"
# The registration's own timing line (prefill, clustering, calibration), not its progress.
"${CLI[@]}" register big --file="$WORK/big.txt" 2>&1 > /dev/null | grep "^registered"
"$BIN/serving-bench" --server="$SERVER" --contexts=big --clients="$CLIENTS" --modes="$MODES" \
  --max_tokens="$MAX_TOKENS"
"${CLI[@]}" delete big > /dev/null

QUARTER=$(( (REPEATS + 3) / 4 ))
names=()
for c in 1 2 3 4; do
  { echo "Archive $c."; for _ in $(seq 1 "$QUARTER"); do cat "$DEMO/demo_document.txt"; done; } \
    > "$WORK/part$c.txt"
  "${CLI[@]}" register "part$c" --file="$WORK/part$c.txt" > /dev/null
  names+=("part$c")
done
echo "== 4 contexts of $QUARTER demo documents each"
"$BIN/serving-bench" --server="$SERVER" --contexts="$(IFS=,; echo "${names[*]}")" \
  --clients="$CLIENTS" --modes="$MODES" --max_tokens="$MAX_TOKENS"
