#!/usr/bin/env bash
# Runs the binaries exported from the CUDA image (scripts/build_images.sh --export) outside a
# container: start the server on the bundled demo model, register a document, generate
# (squeezed and dense), check gRPC health and the probe endpoints, stop with SIGTERM.
#   bash scripts/image_smoke.sh [TARBALL] [DEVICE]     (defaults: .images/squeeze-cuda-opt.tar.gz, cuda)
# cuBLAS and cudart come from the machine ($CUDA_HOME/lib64, default /usr/local/cuda).
set -euo pipefail
cd "$(dirname "$0")/.."
TARBALL=${1:-.images/squeeze-cuda-opt.tar.gz}
DEVICE=${2:-cuda}
WORK=$(mktemp -d)
trap 'kill "$PID" 2>/dev/null || true; rm -rf "$WORK"' EXIT
tar -xzf "$TARBALL" -C "$WORK"
export LD_LIBRARY_PATH="$WORK/squeeze/lib:${CUDA_HOME:-/usr/local/cuda}/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
BIN=$WORK/squeeze/bin
METRICS=${METRICS_PORT:-19400}
"$BIN/squeeze-server" --model=models/squeeze-demo --device="$DEVICE" --address=127.0.0.1:0 \
  --port_file="$WORK/port" --metrics_address="127.0.0.1:$METRICS" > "$WORK/server.log" 2>&1 &
PID=$!
for _ in $(seq 600); do [ -f "$WORK/port" ] && break; sleep 0.1; done
[ -f "$WORK/port" ] || { cat "$WORK/server.log"; echo "image_smoke: server did not start" >&2; exit 1; }
CLI=("$BIN/squeeze-cli" "--server=127.0.0.1:$(cat "$WORK/port")")
grep -m2 -E "device|model" "$WORK/server.log" || true
"${CLI[@]}" health
"${CLI[@]}" register veloria --file=tests/data/demo_document.txt
Q=$'\nQuestion: Which river runs through Veloria?\nAnswer:'
"${CLI[@]}" generate --context=veloria --input="$Q" --temperature=0 --max_tokens=16
"${CLI[@]}" generate --context=veloria --input="$Q" --temperature=0 --max_tokens=16 --mode=dense
for probe in startupz readyz livez; do
  printf '/%s: ' "$probe"
  python3 -c "import urllib.request,sys; print(urllib.request.urlopen(sys.argv[1]).read().decode().strip())" \
    "http://127.0.0.1:$METRICS/$probe"
done
kill -TERM "$PID"
wait "$PID"
echo "image_smoke: OK ($DEVICE)"
