#!/usr/bin/env bash
# One call on the GPU machine (H100/H200, Ubuntu 24.04, torch/transformers installed, no
# network): kernel tests + benchmarks against the PyTorch baselines, then the Hugging Face
# goldens (issue: model conformance) and the demo model's transformers logits. Needs the bundle
# made here by scripts/gpu_bundle.sh, carried as .gpu-bundle. Results land in $OUT:
# the run_gpu.sh logs and CSVs, golden.tar.gz (unpack into tests/data/golden/).
set -u
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
OUT=${OUT:-/tmp/squeeze-device}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [ -f .gpu-bundle/bundle.tar.gz ]; then
  mkdir -p /tmp/bundle && tar -xzf .gpu-bundle/bundle.tar.gz -C /tmp/bundle
  OUT="$OUT" bash bench/run_gpu.sh /tmp/bundle || echo "run_gpu.sh: exit $?"
fi
G=/tmp/golden
python3 tools/make_goldens.py --out "$G" > "$OUT/make_goldens.log" 2>&1 || echo "goldens: exit $?"
python3 tools/demo_model_goldens.py --out "$G/squeeze-demo.json" >> "$OUT/make_goldens.log" 2>&1 \
  || echo "demo goldens: exit $?"
tail -12 "$OUT/make_goldens.log"
tar -czf "$OUT/golden.tar.gz" -C "$G" .
ls -la "$OUT"
