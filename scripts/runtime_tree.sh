#!/usr/bin/env bash
# Copies built binaries and the shared libraries they need into a self-contained tree:
#   DEST/bin/<binaries>   DEST/lib/<libraries>
# (the images' runtime stage, and the exported tarball). glibc, the C++ runtime and the CUDA
# libraries (driver, cudart, cuBLAS) are left to the machine or base image that runs them.
# Usage: scripts/runtime_tree.sh BUILD_DIR DEST BINARY...
set -euo pipefail
build=$1 dest=$2
shift 2
mkdir -p "$dest/bin" "$dest/lib"
for b in "$@"; do
  cp "$build/$b" "$dest/bin/"
  ldd "$build/$b" | awk '/=> \// {print $3}' | while read -r lib; do
    case "$(basename "$lib")" in
      libc.so*|libm.so*|libpthread*|libdl.so*|librt.so*|ld-linux*|libgcc_s*|libstdc++*) ;;
      libcuda.so*|libcudart*|libcublas*|libnvidia*) ;;
      *) cp -L -n "$lib" "$dest/lib/" ;;
    esac
  done
done
