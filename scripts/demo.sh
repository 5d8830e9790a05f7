#!/usr/bin/env bash
# make demo: start a server on the bundled model, register the bundled document, stream an
# answer to a question, stop the server.
set -euo pipefail
BUILD=${1:-build}
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
EXPECTED=""
# The demo model is tiny and its attention diffuse: with the paper's 5% centroids the selection
# misses needle keys (bench/RESULTS.md), with 25% it answers like dense. Real LLMs use 5%.
INDEX_FLAGS=(--centroid_fraction=0.25)
if [ -f "$ROOT/models/squeeze-demo/config.json" ]; then
  MODEL="$ROOT/models/squeeze-demo"
  DOC="$ROOT/models/squeeze-demo/demo_document.txt"
  QUESTION=$(cat "$ROOT/models/squeeze-demo/demo_question.txt")
  EXPECTED=$(cat "$ROOT/models/squeeze-demo/demo_answer.txt")
else
  # No trained demo model yet: the random-weight test model (its answer is noise, but every
  # stage of the service runs).
  MODEL="$BUILD/test-model"
  DOC="$ROOT/tests/data/demo_document.txt"
  QUESTION=$'\nQuestion: Which river runs through Veloria?\nAnswer:'
fi
WORK=$(mktemp -d)
trap 'kill $SERVER_PID 2>/dev/null || true; wait $SERVER_PID 2>/dev/null || true; rm -rf "$WORK"' EXIT

echo "== starting squeeze-server on $MODEL"
"$BUILD/squeeze-server" --model="$MODEL" --address=127.0.0.1:0 --port_file="$WORK/port" \
  --log_level=warn --metrics_address= &
SERVER_PID=$!
for _ in $(seq 1 200); do
  [ -s "$WORK/port" ] && break
  kill -0 $SERVER_PID 2>/dev/null || { echo "server exited during start-up" >&2; exit 1; }
  sleep 0.1
done
ADDR="127.0.0.1:$(cat "$WORK/port")"
CLI=("$BUILD/squeeze-cli" --server="$ADDR")
"${CLI[@]}" health

echo "== registering $(basename "$DOC") ($(wc -w < "$DOC") words)"
"${CLI[@]}" register demo --file="$DOC" "${INDEX_FLAGS[@]}"

echo "== question:${QUESTION}"
echo "== answer, Squeezed Attention at a 10% budget (streamed, greedy):"
"${CLI[@]}" generate --context=demo --input="$QUESTION" --temperature=0 --max_tokens=24 \
  --stop=$'\n' --budget=0.1 | tee "$WORK/squeezed"
echo "== answer, dense attention:"
"${CLI[@]}" generate --context=demo --input="$QUESTION" --temperature=0 --max_tokens=24 \
  --stop=$'\n' --mode=dense
if [ -n "$EXPECTED" ]; then
  echo "== expected:${EXPECTED}"
  if [ "$(tr -d ' \n' < "$WORK/squeezed")" = "$(echo "$EXPECTED" | tr -d ' \n')" ]; then
    echo "== squeezed answer is correct"
  else
    echo "== squeezed answer differs from the expected one" >&2
  fi
fi
echo "== stopping the server (SIGTERM)"
kill -TERM $SERVER_PID
wait $SERVER_PID
echo "== done"
