#!/usr/bin/env bash
# Installs the Debian packages the test suite needs:
#   iproute2     the network-namespace tests (ip netns, veth pairs)
#   docker.io    the container tier (tests/containers): dockerd, containerd, runc, the docker CLI
#   debootstrap  the container tier's stand-in base image (scripts/base-image.sh)
#   chromium     the browser tier (tests/browser): the executor's web page in headless Chromium
# Idempotent: installs only what is missing, and does nothing when everything is there.
# Without root it installs nothing and says which tests will skip. Debian/Ubuntu only.
set -euo pipefail
need=()
command -v ip >/dev/null 2>&1 || need+=(iproute2)
# dockerd lives in /usr/sbin; test both names so a docker CLI installed elsewhere (without the
# daemon) does not count as an engine.
{ command -v dockerd >/dev/null 2>&1 || [ -x /usr/sbin/dockerd ]; } || need+=(docker.io)
{ command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ]; } || need+=(debootstrap)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "system-deps: missing ${need[*]} and not root; the tests needing them will skip" >&2
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "system-deps: missing ${need[*]} and no apt-get here; the tests needing them will skip" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# --no-install-recommends: docker.io recommends apparmor, cgroupfs-mount, git, xz-utils etc.,
# none of which the tests use. Package scripts may fail to start services on a machine
# without an init system; that is harmless (the tests start dockerd themselves).
apt-get install -y -qq --no-install-recommends "${need[@]}"
