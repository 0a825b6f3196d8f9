#!/usr/bin/env bash
# Installs the Debian packages the test suite needs (iproute2 for the network-namespace tests).
# Idempotent; does nothing when the tools are already there or when not root.
set -euo pipefail
need=()
command -v ip >/dev/null 2>&1 || need+=(iproute2)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "system-deps: missing ${need[*]} and not root; the tests needing them will skip" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${need[@]}"
