#!/usr/bin/env bash
# What to look at when the kind e2e fails: every object, the GrainClusters, and the logs of
# the operator, the executor and the workers. Never fails itself.
set -uo pipefail
ns="${GRAIN_E2E_NAMESPACE:-grain-e2e}"
system="${GRAIN_E2E_SYSTEM_NAMESPACE:-grain-system}"
run() { echo; echo "\$ $*"; "$@" 2>&1 || true; }
run kubectl get nodes -o wide
run kubectl get all -A -o wide
run kubectl get grainclusters -A -o yaml
run kubectl -n "$ns" describe graincluster
run kubectl -n "$ns" get networkpolicy,secret -o wide
run kubectl -n "$ns" rollout history deployment/demo-executor
run kubectl -n "$ns" rollout history daemonset/demo-worker
run kubectl -n "$ns" get events --sort-by=.lastTimestamp
run kubectl -n "$system" get events --sort-by=.lastTimestamp
run kubectl -n "$system" describe deployment -l app.kubernetes.io/component=operator
run kubectl -n "$system" logs deployment/grain-operator --all-containers --tail=500
run kubectl -n "$system" logs deployment/grain-operator --all-containers --previous --tail=200
run kubectl -n "$ns" describe pods
run kubectl -n "$ns" logs -l app.kubernetes.io/component=executor --all-containers --tail=500 --prefix
run kubectl -n "$ns" logs -l app.kubernetes.io/component=worker --all-containers --tail=300 --prefix
run kubectl -n "$ns" logs -l job-name=grain-e2e-incluster --all-containers --tail=300
exit 0
