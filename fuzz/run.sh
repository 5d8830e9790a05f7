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

# The largest input per target: a few times its largest seed, so that mutations can grow an
# input past every size the parser checks, but executions stay short (libFuzzer's own default
# is the largest seed; an input far past that only costs time in the parser's loops).
max_len() {
  case "$1" in
    tokenizer_json | tokenizer_model) echo 16384 ;;
    *) echo 4096 ;;
  esac
}

for t in "${targets[@]}"; do
  work="$build/fuzz-corpus/$t"
  mkdir -p "$work" "$build/fuzz-artifacts/$t"
  log="$build/fuzz-$t.log"
  # New inputs go to the build's corpus; the seeds in the repo stay as they are.
  if ! nice -n 19 "$build/fuzz/${t}_fuzz" -runs="$runs" -max_total_time="${FUZZ_SECONDS:-0}" \
      -max_len="$(max_len "$t")" -timeout=10 -rss_limit_mb=4096 \
      -print_final_stats=1 -artifact_prefix="$build/fuzz-artifacts/$t/" \
      "$work" "$here/corpus/$t" >"$log" 2>&1; then
    echo "$t: FAILED (see $log and $build/fuzz-artifacts/$t/)"
    tail -30 "$log"
    exit 1
  fi
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
  echo "$t: ${execs:-?} executions, no crash ($log)"
done
