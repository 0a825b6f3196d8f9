#!/usr/bin/env bash
# Create the kind cluster for tests/e2e, build the image and load it into the nodes.
#   tests/e2e/kind_up.sh [default|static-cpu]      then: pytest tests/e2e
# The GitHub workflow (.github/workflows/e2e.yml) does the same with helm/kind-action.
set -euo pipefail
cd "$(dirname "$0")/../.."
variant="${1:-${GRAIN_E2E_VARIANT:-default}}"
cluster="${GRAIN_E2E_CLUSTER:-grain-e2e}"
image="${GRAIN_E2E_IMAGE:-grain:e2e}"
if ! kind get clusters 2>/dev/null | grep -qx "$cluster"; then
  kind create cluster --name "$cluster" --config "tests/e2e/kind-$variant.yaml" --wait 180s
fi
docker build -t "$image" .
kind load docker-image "$image" --name "$cluster"
echo "ready: GRAIN_E2E_CLUSTER=$cluster GRAIN_E2E_VARIANT=$variant pytest tests/e2e -m e2e"
