#!/usr/bin/env bash
# Regenerates squeeze.yaml from the Helm chart (deploy/helm/squeeze) with values.yaml, using the
# offline renderer deploy/helm/render (Debian: golang-go, golang-github-masterminds-sprig-dev,
# golang-k8s-sigs-yaml-dev). helm_chart_test fails when squeeze.yaml is stale.
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${BUILD:-build}/helm-render"
mkdir -p "$(dirname "$out")"
GO111MODULE=off GOPATH=/usr/share/gocode go build -o "$out" ./deploy/helm/render
{
  cat <<'HEADER'
# Squeeze on Kubernetes as plain manifests: the CPU image (Dockerfile) with the bundled demo
# model, two replicas behind the nginx context-affinity router, no GPU, no prometheus-operator
# objects, for the namespace "default" (kubectl apply -n default -f deploy/k8s/squeeze.yaml).
# Generated from the Helm chart by deploy/k8s/render.sh (values: deploy/k8s/values.yaml); edit
# the chart or the values, not this file. GPU clusters: use the chart (README, Deployment).
HEADER
  "$out" -chart deploy/helm/squeeze -f deploy/k8s/values.yaml -name squeeze -namespace default
} > deploy/k8s/squeeze.yaml
echo "wrote deploy/k8s/squeeze.yaml"
