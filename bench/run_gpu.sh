#!/usr/bin/env bash
# Runs on a GPU machine, from the repository root, against prebuilt binaries:
#   1. the GPU kernel test (tests/gpu/attention_kernels_test.cc),
#   2. our decode attention benchmark (bench/gpu_attention_bench.cu),
#   3. the torch SDPA baseline (bench/torch_attention_baseline.py),
# then prints one combined table: ours vs cuDNN, squeezed vs our dense, % of the measured
# device-to-device copy bandwidth.
# Then the causal prefill step: tests/gpu/prefill_attention_test.cc, bench/gpu_prefill_bench.cu
# and the baseline's --prefill mode, combined into a TFLOP/s table (SKIP_PREFILL=1: skip it).
#
# Usage: bench/run_gpu.sh [BIN_DIR]      (default: build-cuda)
#   BIN_DIR/lib, when present, is put on LD_LIBRARY_PATH (the binaries' shared libraries).
#   QUICK=1       small configurations only (smoke run)
#   SKIP_TEST=1   benchmarks only
#   SKIP_DECODE=1 the prefill part only
# Logs and CSVs go to $OUT when set (else /tmp/squeeze-gpu). Exit status: the test's.
set -u
BIN=${1:-build-cuda}
LOG=${OUT:-/tmp/squeeze-gpu}
mkdir -p "$LOG"
if [ -d "$BIN/lib" ]; then export LD_LIBRARY_PATH="$BIN/lib:${LD_LIBRARY_PATH:-}"; fi
QUICK_ARG=""
if [ "${QUICK:-0}" = "1" ]; then QUICK_ARG="--quick"; fi

nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,clocks.mem \
  --format=csv 2>&1 | tee "$LOG/gpu.txt"

test_rc=0
if [ "${SKIP_DECODE:-0}" != "1" ]; then
if [ "${SKIP_TEST:-0}" != "1" ]; then
  echo "== attention_kernels_test"
  start=$(date +%s)
  "$BIN/attention_kernels_test" 2>&1 | tee "$LOG/attention_kernels_test.log"
  test_rc=${PIPESTATUS[0]}
  echo "attention_kernels_test: exit $test_rc after $(( $(date +%s) - start )) s"
fi

echo "== gpu-attention-bench"
"$BIN/gpu-attention-bench" $QUICK_ARG --csv "$LOG/ours.csv" 2>&1 \
  | tee "$LOG/gpu_attention_bench.log"

echo "== torch SDPA baseline"
PYTHONUNBUFFERED=1 python3 bench/torch_attention_baseline.py $QUICK_ARG --csv "$LOG/torch.csv" \
  2>&1 | tee "$LOG/torch_baseline.log"

echo "== combined"
python3 - "$LOG/ours.csv" "$LOG/torch.csv" <<'EOF' 2>&1 | tee "$LOG/combined.txt"
import csv, sys
def load(path):
    try:
        with open(path) as f:
            return list(csv.DictReader(f))
    except OSError:
        return []
ours, torch_rows = load(sys.argv[1]), load(sys.argv[2])
copy = float((ours or torch_rows or [{"copy_gbps": 0}])[0]["copy_gbps"])
print(f"device-to-device copy (ours): {copy:.0f} GB/s")
keys = sorted({(int(r["batch"]), int(r["context"])) for r in ours + torch_rows})
print(f"{'B':<3} {'context':<7} {'path':<26} {'kept%':>6} {'time_us':>9} {'%copy':>6} "
      f"{'vs cuDNN':>9} {'vs ours dense':>13}")
for b, s in keys:
    mine = [r for r in ours if int(r["batch"]) == b and int(r["context"]) == s]
    theirs = [r for r in torch_rows if int(r["batch"]) == b and int(r["context"]) == s]
    cudnn = [float(r["time_us"]) for r in theirs if r["impl"] == "torch_cudnn"]
    best_cudnn = min(cudnn) if cudnn else None
    dense = [float(r["time_us"]) for r in mine if r["path"] == "dense"]
    dense = dense[0] if dense else None
    rows = [(r["impl"] + ":" + r["path"], float(r["kept_frac"]), float(r["time_us"]),
             float(r["gbps"])) for r in theirs]
    rows += [("ours:" + r["path"], float(r["kept_frac"]), float(r["time_us"]), float(r["gbps"]))
             for r in mine]
    for name, kept, us, gbps in rows:
        vs_cudnn = f"{best_cudnn / us:9.2f}" if best_cudnn else f"{'-':>9}"
        vs_dense = f"{dense / us:13.2f}" if dense else f"{'-':>13}"
        pct = 100 * gbps / copy if copy else 0
        print(f"{b:<3} {s:<7} {name:<26} {100 * kept:6.2f} {us:9.1f} {pct:6.1f} "
              f"{vs_cudnn} {vs_dense}")
print("(vs cuDNN / vs ours dense: that time over this row's time, >1 = this row faster; "
      "%copy: bytes actually needed over time, against the copy bandwidth)")
EOF
fi

if [ "${SKIP_PREFILL:-0}" != "1" ]; then
  if [ "${SKIP_TEST:-0}" != "1" ]; then
    echo "== prefill_attention_test"
    start=$(date +%s)
    "$BIN/prefill_attention_test" 2>&1 | tee "$LOG/prefill_attention_test.log"
    prefill_rc=${PIPESTATUS[0]}
    echo "prefill_attention_test: exit $prefill_rc after $(( $(date +%s) - start )) s"
    if [ "$test_rc" = 0 ]; then test_rc=$prefill_rc; fi
  fi
  echo "== gpu-prefill-bench"
  "$BIN/gpu-prefill-bench" $QUICK_ARG --csv "$LOG/ours_prefill.csv" 2>&1 \
    | tee "$LOG/gpu_prefill_bench.log"
  echo "== torch SDPA prefill baseline"
  PYTHONUNBUFFERED=1 python3 bench/torch_attention_baseline.py $QUICK_ARG --prefill \
    --csv "$LOG/torch_prefill.csv" 2>&1 | tee "$LOG/torch_prefill_baseline.log"
  echo "== combined prefill"
  python3 - "$LOG/ours_prefill.csv" "$LOG/torch_prefill.csv" <<'EOF' 2>&1 \
    | tee "$LOG/combined_prefill.txt"
import csv, sys
def load(path):
    try:
        with open(path) as f:
            return list(csv.DictReader(f))
    except OSError:
        return []
rows = load(sys.argv[1]) + load(sys.argv[2])
print(f"{'n':<7} {'impl:path':<36} {'time_us':>12} {'TFLOP/s':>8} {'vs best torch':>13}")
for n in sorted({int(r["context"]) for r in rows}):
    here = [r for r in rows if int(r["context"]) == n]
    torch_us = [float(r["time_us"]) for r in here if not r["impl"].startswith("ours")]
    best = min(torch_us) if torch_us else None
    for r in here:
        us = float(r["time_us"])
        vs = f"{best / us:13.2f}" if best else f"{'-':>13}"
        print(f"{n:<7} {r['impl'] + ':' + r['path']:<36} {us:12.1f} "
              f"{float(r['tflops']):8.1f} {vs}")
print("(causal FLOPs 4*n^2/2*d*Hq, Hq=32 Hkv=8 d=128 bf16, past=0; vs best torch: best torch "
      "time over this row's time, >1 = this row faster)")
EOF
fi
exit "$test_rc"
