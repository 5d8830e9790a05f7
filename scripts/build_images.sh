#!/usr/bin/env bash
# Builds the Squeeze images: squeeze:0.1.0 (CPU, Dockerfile) and squeeze:0.1.0-cuda (CUDA backend
# for sm_90a, Dockerfile.cuda), with docker or podman.
#
#   scripts/build_images.sh [--cpu] [--cuda] [--standin] [--export] [--tool=docker|podman]
#
#   --cpu, --cuda  which images (default: both)
#   --standin      for machines that cannot pull base images: builds local stand-ins first, a
#                  Debian 12 root file system made with debootstrap (debian:12's place) and the
#                  same plus this machine's CUDA toolkit ($CUDA_HOME, default /usr/local/cuda;
#                  nvidia/cuda devel's and runtime's place), and builds FROM them with
#                  `podman build --isolation chroot`. A stand-in checks that the images build;
#                  the images to deploy come from NVIDIA's and Debian's real bases.
#   --export       also writes .images/squeeze-cuda-opt.tar.gz: the CUDA image's /opt/squeeze/bin
#                  and /opt/squeeze/lib (the binaries and the libraries they need, CUDA's left to
#                  the machine), to run the image's binaries on a GPU machine without a container:
#                    tar -xzf squeeze-cuda-opt.tar.gz && LD_LIBRARY_PATH=$PWD/squeeze/lib \
#                      squeeze/bin/squeeze-server --model=... --device=cuda
#
# Environment: TAG (default 0.1.0), JOBS (parallel compile jobs in the build stage).
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${TAG:-0.1.0}
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
OUT=.images
cpu=0 cuda=0 standin=0 export=0 tool=""
for arg in "$@"; do
  case "$arg" in
    --cpu) cpu=1 ;;
    --cuda) cuda=1 ;;
    --standin) standin=1 ;;
    --export) export=1 ;;
    --tool=*) tool=${arg#--tool=} ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "build_images: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done
if [ $cpu -eq 0 ] && [ $cuda -eq 0 ]; then cpu=1 cuda=1; fi
if [ -z "$tool" ]; then
  if [ $standin -eq 1 ]; then tool=podman; elif command -v docker >/dev/null; then tool=docker;
  else tool=podman; fi
fi
build=("$tool" build)
if [ "$tool" = podman ]; then build+=(--isolation chroot); fi
args=()
if [ -n "${JOBS:-}" ]; then args+=(--build-arg "JOBS=$JOBS"); fi
mkdir -p "$OUT"

# Stand-in bases: localhost/squeeze-standin:debian12 (debootstrap), :cuda-devel (+ the toolkit's
# compiler, headers, cudart and cuBLAS) and :cuda-runtime (+ cudart and cuBLAS).
make_standin_bases() {
  local rootfs=${STANDIN_ROOTFS:-/var/tmp/squeeze-standin-rootfs} stage kind lib
  if [ ! -x "$rootfs/usr/bin/apt-get" ]; then
    echo "build_images: debootstrap Debian 12 into $rootfs"
    debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian
  fi
  echo "build_images: stand-in bases localhost/squeeze-standin:{debian12,cuda-devel,cuda-runtime}"
  tar -C "$rootfs" -c . | podman import - localhost/squeeze-standin:debian12
  stage=$(mktemp -d)
  mkdir -p "$stage/devel/usr/local/cuda/lib" "$stage/runtime/usr/local/cuda/lib"
  cp -a "$CUDA_HOME"/{bin,include,nvvm} "$stage/devel/usr/local/cuda/"
  for lib in "$CUDA_HOME"/lib/{libcudart*,libcublas*,libcudadevrt.a,cmake,stubs}; do
    if [ -e "$lib" ]; then cp -a "$lib" "$stage/devel/usr/local/cuda/lib/"; fi
  done
  cp -a "$CUDA_HOME"/lib/{libcudart.so*,libcublas.so*,libcublasLt.so*} \
    "$stage/runtime/usr/local/cuda/lib/"
  for kind in devel runtime; do
    ln -s lib "$stage/$kind/usr/local/cuda/lib64"
    printf 'FROM localhost/squeeze-standin:debian12\nCOPY usr /usr\n' > "$stage/$kind/Containerfile"
    podman build --isolation chroot -t "localhost/squeeze-standin:cuda-$kind" "$stage/$kind"
  done
  rm -rf "$stage"
}

cuda_bases=()
if [ $standin -eq 1 ]; then
  [ "$tool" = podman ] || { echo "build_images: --standin needs podman" >&2; exit 2; }
  if podman image exists localhost/squeeze-standin:cuda-devel &&
     podman image exists localhost/squeeze-standin:cuda-runtime && [ -z "${STANDIN_REBUILD:-}" ]; then
    echo "build_images: reusing the stand-in bases (STANDIN_REBUILD=1 rebuilds them)"
  else
    make_standin_bases
  fi
  args+=(--build-arg BASE=localhost/squeeze-standin:debian12)
  cuda_bases=(--build-arg BUILD_BASE=localhost/squeeze-standin:cuda-devel
              --build-arg RUNTIME_BASE=localhost/squeeze-standin:cuda-runtime)
fi

if [ $cpu -eq 1 ]; then
  "${build[@]}" "${args[@]}" -f Dockerfile -t "squeeze:$TAG" .
fi
if [ $cuda -eq 1 ]; then
  "${build[@]}" "${args[@]}" "${cuda_bases[@]}" -f Dockerfile.cuda -t "squeeze:$TAG-cuda" .
  if [ $export -eq 1 ]; then
    ctr=$("$tool" create "squeeze:$TAG-cuda")
    rm -rf "$OUT/squeeze"
    mkdir -p "$OUT/squeeze"
    "$tool" cp "$ctr:/opt/squeeze/bin" "$OUT/squeeze/bin"
    "$tool" cp "$ctr:/opt/squeeze/lib" "$OUT/squeeze/lib"
    "$tool" rm "$ctr" >/dev/null
    tar -C "$OUT" -czf "$OUT/squeeze-cuda-opt.tar.gz" squeeze
    rm -rf "$OUT/squeeze"
    echo "build_images: wrote $OUT/squeeze-cuda-opt.tar.gz ($(du -h "$OUT/squeeze-cuda-opt.tar.gz" | cut -f1))"
  fi
fi
"$tool" images --filter reference=squeeze
