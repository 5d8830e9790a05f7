#!/usr/bin/env bash
# One call on the GPU machine (H100/H200, Ubuntu 24.04, torch/transformers installed, no
# network). First the Hugging Face goldens (issue: model conformance) and the demo model's
# transformers logits (cheap, CPU), then the kernel tests and benchmarks against the PyTorch
# baselines (bench/run_gpu.sh). Needs the bundle made here by scripts/gpu_bundle.sh, carried as
# .gpu-bundle. Results land in $OUT: golden.tar.gz (unpack into tests/data/golden/) and the
# run_gpu.sh logs and CSVs. Each stage has a time limit so one hang cannot eat the call.
set -u
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
OUT=${OUT:-/tmp/squeeze-device}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ "${SKIP_GOLDENS:-0}" != "1" ]; then
  G=/tmp/golden
  timeout 240 python3 tools/make_goldens.py --out "$G" > "$OUT/make_goldens.log" 2>&1 \
    || echo "goldens: exit $?"
  timeout 120 python3 tools/demo_model_goldens.py --out "$G/squeeze-demo.json" \
    >> "$OUT/make_goldens.log" 2>&1 || echo "demo goldens: exit $?"
  tail -14 "$OUT/make_goldens.log"
  tar -czf "$OUT/golden.tar.gz" -C "$G" .
fi
if [ -f .gpu-bundle/bundle.tar.gz ]; then
  mkdir -p /tmp/bundle && tar -xzf .gpu-bundle/bundle.tar.gz -C /tmp/bundle
  LOGS=/tmp/gpu-logs
  OUT="$LOGS" timeout "${GPU_STAGE_LIMIT:-330}" bash bench/run_gpu.sh /tmp/bundle \
    > "$LOGS.txt" 2>&1 || echo "run_gpu.sh: exit $?"
  mv "$LOGS.txt" "$LOGS/run_gpu.log" 2>/dev/null || mkdir -p "$LOGS"
  grep -E "^\[  (FAILED|PASSED) |exit|rror" "$LOGS/run_gpu.log" | head -40
  cat "$LOGS/combined.txt" "$LOGS/combined_prefill.txt" 2>/dev/null
  # The device tool brings back at most 8 files: the logs travel as one archive.
  tar -czf "$OUT/gpu_logs.tar.gz" -C "$LOGS" .
fi
ls -la "$OUT"
