#!/usr/bin/env bash
# A stand-in for python:3.11-slim made from Debian's own packages, for machines that can reach
# Debian's archive and PyPI but no image registry (build hosts, air-gapped mirrors, CI here).
#
#   scripts/base-image.sh [TAG]        (default grain-base/python:3.11-bookworm)
#
# Debian bookworm's python3 is 3.11. Steps, each cached:
#   1. debootstrap --variant=minbase --include=python3,python3-venv,python3-pip bookworm
#      -> a root file system tarball under GRAIN_BASE_CACHE (default /var/cache/grain-test),
#         kept between runs (the slow step: about 1.5 minutes);
#   2. docker import of that tarball;
#   3. a small layer on top: no EXTERNALLY-MANAGED marker (the image's Python is the
#      application's, as in python:3.11-slim), python/pip on PATH, and this machine's CA
#      bundle (pip inside `docker build --network host` must trust what this host trusts).
# Prints the tag. Uses the engine named by DOCKER_HOST (scripts/container-engine.sh host).
# Needs root (debootstrap does). Set GRAIN_DEBIAN_MIRROR to use another Debian mirror.
set -euo pipefail

TAG=${1:-grain-base/python:3.11-bookworm}
SUITE=bookworm
INCLUDE=python3,python3-venv,python3-pip
MIRROR=${GRAIN_DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=${GRAIN_BASE_CACHE:-/var/cache/grain-test}
CA_BUNDLE=${GRAIN_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
DOCKER=${DOCKER:-$( [ -x /usr/bin/docker ] && echo /usr/bin/docker || command -v docker || echo docker )}
# The cache key names everything that changes the tree.
TARBALL="$CACHE/rootfs-$SUITE-minbase-$(echo "$INCLUDE" | tr ',' '+').tar"

log() { echo "base-image: $*" >&2; }

if "$DOCKER" image inspect "$TAG" >/dev/null 2>&1; then
  echo "$TAG"
  exit 0
fi

if [ ! -s "$TARBALL" ]; then
  [ "$(id -u)" = 0 ] || { log "debootstrap needs root"; exit 2; }
  command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] \
    || { log "no debootstrap (run scripts/system-deps.sh)"; exit 2; }
  mkdir -p "$CACHE"
  work=$(mktemp -d "$CACHE/rootfs.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  log "debootstrap $SUITE into $work (once per machine; about 1.5 minutes)"
  PATH="$PATH:/usr/sbin:/sbin" debootstrap --variant=minbase --include="$INCLUDE" \
    "$SUITE" "$work/root" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
    || { tail -30 "$work/debootstrap.log" >&2; exit 1; }
  # Package lists and .debs are not needed in an image (python:3.11-slim has none either).
  rm -rf "$work/root/var/cache/apt/archives/"*.deb "$work/root/var/lib/apt/lists/"*
  tar --numeric-owner -C "$work/root" -cf "$work/rootfs.tar" .
  mv "$work/rootfs.tar" "$TARBALL"  # atomic: a half-written tarball is never cached
  rm -rf "$work"
  trap - EXIT
fi

ROOTFS_TAG="${TAG%%:*}-rootfs:${TAG##*:}"
log "importing $TARBALL as $ROOTFS_TAG"
"$DOCKER" import "$TARBALL" "$ROOTFS_TAG" >/dev/null

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp "$CA_BUNDLE" "$ctx/ca-certificates.crt"
cat >"$ctx/Dockerfile" <<EOF
FROM $ROOTFS_TAG
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
RUN rm -f /usr/lib/python3*/EXTERNALLY-MANAGED \\
 && ln -sf /usr/bin/python3 /usr/local/bin/python \\
 && ln -sf /usr/bin/pip3 /usr/local/bin/pip \\
 && python --version && pip --version
ENV LANG=C.UTF-8 \\
    PATH=/usr/local/bin:/usr/local/sbin:/usr/bin:/usr/sbin:/bin:/sbin \\
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \\
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt
CMD ["python3"]
EOF
log "building $TAG"
DOCKER_BUILDKIT=0 "$DOCKER" build -q -t "$TAG" "$ctx" >/dev/null
"$DOCKER" rmi "$ROOTFS_TAG" >/dev/null 2>&1 || true  # the built image keeps the layer
echo "$TAG"
