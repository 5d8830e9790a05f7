#!/usr/bin/env bash
# Installs the Debian 12 packages Squeeze builds and runs with. Idempotent: does nothing when
# every package is present. Needs root (or sudo). SQUEEZE_DEPS=build installs only what building
# the binaries needs (the images' build stage); the default adds the test tools.
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build pkg-config git ca-certificates
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev libspdlog-dev nlohmann-json3-dev libssl-dev
  libsentencepiece-dev sentencepiece
  libgtest-dev libgmock-dev libopenblas-dev
  python3
  libcpp-httplib-dev
)
if [ "${SQUEEZE_DEPS:-all}" != "build" ]; then
  PACKAGES+=(
    clang-format
    # tests: certificates for the TLS tests
    openssl
    # tests/cpu: the NumPy reference forward, Python's jinja2 for the chat templates
    python3-numpy python3-jinja2
    # tests/ops: the Python client and CLI tests, replicas behind nginx
    python3-grpcio python3-protobuf python3-yaml nginx-light
    # tests/ops/helm_chart_test: the chart renderer, promtool, the Kubernetes API models
    golang-go golang-github-masterminds-sprig-dev golang-k8s-sigs-yaml-dev prometheus
    python3-kubernetes
  )
fi

# `install_deps.sh fuzz`: also the clang toolchain of `make fuzz` (libFuzzer, sanitizers).
if [ "${1:-}" = "fuzz" ]; then
  PACKAGES+=(clang-14 libclang-rt-14-dev)
fi

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "install_deps: need root to install: ${missing[*]}" >&2; exit 1
  fi
fi
echo "install_deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
