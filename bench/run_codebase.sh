#!/usr/bin/env bash
# The codebase benchmark through the real serving path: makes the tasks from the CPython standard
# library (tools/codebase_tasks.py), starts squeeze-server on a model, runs
# bench/codebase_bench.py against it.
#   bench/run_codebase.sh [BUILD] [TASKS PER FILE (0: all)] [LENGTHS IN K, comma-separated]
# MODEL (default models/squeeze-demo: a smoke run; the benchmark's model is a code model, see
# tools/train_code_model.py), STDLIB (default /usr/lib/python3.11), SERVER_FLAGS, BENCH_FLAGS
# (e.g. --settings=dense,squeezed:0.1 --json=out.json), TASKS (a directory of tasks made before,
# e.g. on another machine, instead of making them here), KEEP_TASKS (copy the tasks made here to
# this directory, so that another run can use exactly the same ones). Task lengths are exact: from
# the `tokenizers` module where it is installed, else from the started server's Tokenize RPC;
# TOKENS=estimate estimates them at CPT characters per token (default codebase_tasks.py's).
set -euo pipefail
BUILD=${1:-build}
LIMIT=${2:-0}
LENGTHS=${3:-8,16}
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
MODEL=${MODEL:-$ROOT/models/squeeze-demo}
STDLIB=${STDLIB:-/usr/lib/python3.11}
PY=${PYTHON:-/usr/bin/python3}  # Debian's python3-grpcio and python3-protobuf
WORK=$(mktemp -d)
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; rm -rf "$WORK"' EXIT
tokens=()
for k in ${LENGTHS//,/ }; do tokens+=("$((k * 1024))"); done
"$BUILD/squeeze-server" --model="$MODEL" --address=127.0.0.1:0 --port_file="$WORK/port" \
  --log_level=warn --max_tokens_cap=64 --default_max_tokens=64 --metrics_address= \
  ${SERVER_FLAGS:-} &
PID=$!
for _ in $(seq 1 1200); do [ -s "$WORK/port" ] && break; sleep 0.1; done
[ -s "$WORK/port" ] || { echo "squeeze-server did not start (see its log above)" >&2; exit 1; }
export PYTHONPATH="$BUILD/python:$ROOT/client/python${PYTHONPATH:+:$PYTHONPATH}"
if [ -n "${TASKS:-}" ]; then
  cp -r "$TASKS" "$WORK/tasks"
else
  # Exact task lengths: the `tokenizers` module where it is installed, else the server's own
  # tokenizer through its Tokenize RPC (CPT estimates only with TOKENS=estimate).
  tok_flag=(--tokenize-server "127.0.0.1:$(cat "$WORK/port")")
  [ -f "$MODEL/tokenizer.json" ] && "$PY" -c "import tokenizers" 2>/dev/null && tok_flag=(--tokenizer "$MODEL")
  [ "${TOKENS:-}" = estimate ] && tok_flag=()
  "$PY" "$ROOT/tools/codebase_tasks.py" --stdlib "$STDLIB" --out "$WORK/tasks" \
    --lengths "$(IFS=,; echo "${tokens[*]}")" --no-context "${tok_flag[@]}" \
    ${CPT:+--chars-per-token "$CPT"} --summary >&2
  [ -n "${KEEP_TASKS:-}" ] && cp -r "$WORK/tasks" "$KEEP_TASKS"
fi
"$PY" "$ROOT/bench/codebase_bench.py" --server="127.0.0.1:$(cat "$WORK/port")" --tasks="$WORK/tasks" \
  --lengths="$LENGTHS" --limit="$LIMIT" ${BENCH_FLAGS:-}
