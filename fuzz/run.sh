#!/usr/bin/env bash
# Runs every fuzz target one after the other (niced: the machine is shared) from the seed
# corpora in fuzz/corpus/<target>, and prints the executions each reached.
#   fuzz/run.sh BUILD_DIR [RUNS] [TARGET...]     RUNS: executions per target (default 10000000)
# FUZZ_SECONDS=N also stops each target after N seconds (the executions reached are printed).
set -euo pipefail
build=${1:?build dir}
runs=${2:-10000000}
shift $(( $# > 1 ? 2 : 1 ))
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(safetensors config tokenizer_json tokenizer_model context_file convert)
here=$(cd "$(dirname "$0")" && pwd)
for t in "${targets[@]}"; do
  work="$build/fuzz-corpus/$t"
  mkdir -p "$work" "$build/fuzz-artifacts/$t"
  log="$build/fuzz-$t.log"
  # New inputs go to the build's corpus; the seeds in the repo stay as they are.
  if ! nice -n 19 "$build/fuzz/${t}_fuzz" -runs="$runs" -max_total_time="${FUZZ_SECONDS:-0}" \
      -max_len=131072 -timeout=10 -rss_limit_mb=4096 \
      -print_final_stats=1 -artifact_prefix="$build/fuzz-artifacts/$t/" \
      "$work" "$here/corpus/$t" >"$log" 2>&1; then
    echo "$t: FAILED (see $log and $build/fuzz-artifacts/$t/)"
    tail -30 "$log"
    exit 1
  fi
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
  echo "$t: ${execs:-?} executions, no crash ($log)"
done
