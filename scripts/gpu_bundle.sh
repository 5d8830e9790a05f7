#!/usr/bin/env bash
# Builds the CUDA test and benchmark binaries here (where gRPC/Abseil/spdlog are installed) and
# packs them with the shared libraries the GPU machine lacks into .gpu-bundle/bundle.tar.xz
# (git-ignored),
# for scripts/device_run.sh there. System, C++ runtime and CUDA libraries are left to the GPU
# machine's own.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BUILD=${BUILD:-$ROOT/build-cuda}
OUTDIR=$ROOT/.gpu-bundle
cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release > /dev/null
# BINS (space-separated) narrows the bundle to what one call needs (the carry limit is 64 MiB).
if [ -n "${BINS:-}" ]; then
  read -r -a BINS <<< "$BINS"
else
  BINS=(attention_kernels_test prefill_attention_test cluster_scores_test model_ops_test gemv_test
        kmeans_gpu_test cuda_model_test sampling_gpu_test gpu-attention-bench gpu-prefill-bench gpu-forward-bench
        kmeans-bench accuracy-bench squeeze-server squeeze-cli)
fi
cmake --build "$BUILD" --target "${BINS[@]}" -j "$(nproc)"
rm -rf "$OUTDIR"
mkdir -p "$OUTDIR/lib"
for b in "${BINS[@]}"; do cp "$BUILD/$b" "$OUTDIR/"; done
# EXTRA (space-separated PATH=NAME): more binaries, e.g. a benchmark built from another commit
# (NAME gpu-forward-bench-base: the device_run.sh stage forward-ab runs it beside the new one).
for extra in ${EXTRA:-}; do cp "${extra%%=*}" "$OUTDIR/${extra#*=}"; done
# With the server: the Python client and its generated protobuf modules (bench scripts use it),
# and with WITH_STDLIB=1 the *.py of this machine's CPython standard library (the codebase
# benchmark's contexts, which the GPU machine's Python does not have in this version).
if [[ " ${BINS[*]} " == *" squeeze-server "* ]]; then
  cmake --build "$BUILD" --target python_client > /dev/null
  cp -r "$BUILD/python" "$OUTDIR/python"
  find "$OUTDIR/python" -name __pycache__ -prune -exec rm -rf {} +
fi
if [ "${WITH_STDLIB:-0}" = 1 ]; then
  STDLIB=${STDLIB:-/usr/lib/python3.11}
  mkdir -p "$OUTDIR/stdlib"
  (cd "$(dirname "$STDLIB")" && find "$(basename "$STDLIB")" -name '*.py' -not -path '*/site-packages/*' \
     -not -path '*/dist-packages/*' -not -path '*/__pycache__/*' | sort | tar -cf - -T -) \
    | tar -xf - -C "$OUTDIR/stdlib"
fi
for bin in "${BINS[@]/#/$OUTDIR/}"; do
  ldd "$bin" | awk '/=> \// {print $3}' | while read -r lib; do
    case "$(basename "$lib")" in
      libc.so*|libm.so*|libpthread*|libdl.so*|librt.so*|ld-linux*|libgcc_s*|libstdc++*) ;;
      libcuda.so*|libcudart*|libcublas*|libnvidia*) ;;
      *) cp -L -n "$lib" "$OUTDIR/lib/" ;;
    esac
  done
done
# Stripped and xz-compressed in one stream with a dictionary larger than the whole bundle, so
# that the binaries, which share most of their code, are stored nearly once (five test and bench
# binaries: 16 MB instead of 30 MB with xz's default 8 MiB window), to fit the device tool's
# 64 MiB carry limit with the working tree.
strip --strip-unneeded "$OUTDIR"/* "$OUTDIR"/lib/* 2>/dev/null || true  # (directories: skipped)
tar -cf - -C "$OUTDIR" . | xz -T1 --lzma2=preset=6,dict=256MiB > "$ROOT/.gpu-bundle.tar.xz"
rm -rf "$OUTDIR"
mkdir -p "$OUTDIR"
mv "$ROOT/.gpu-bundle.tar.xz" "$OUTDIR/bundle.tar.xz"
du -sh "$OUTDIR/bundle.tar.xz"
