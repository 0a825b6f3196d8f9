#!/usr/bin/env bash
# Fills a wheelhouse with every wheel the image installs, for an air-gapped image build:
#
#   scripts/wheelhouse.sh [DIR]      (default build/wheelhouse; `make wheelhouse` runs this)
#   docker build --build-arg OFFLINE=1 -t grain:dev .     (installs from build/wheelhouse only)
#
# What it downloads: the pins of constraints.txt (the runtime dependencies of grain-trio[operator])
# and the project's build backend (pyproject.toml's build-system.requires), as binary wheels
# for the IMAGE's platform, not this host's: CPython $WHEEL_PYTHON (default 3.11) on
# Linux/glibc $WHEEL_ARCH (default: this machine's; x86_64 or aarch64). So a wheelhouse can be
# made on any machine with pip and network access, then carried to the build host.
# PIP (default "python3 -m pip") is the pip to run; its configuration (index, proxy, CA)
# applies. Already downloaded wheels are kept; the directory is only ever added to.
set -euo pipefail
cd "$(dirname "$0")/.."

DEST=${1:-build/wheelhouse}
PIP=${PIP:-python3 -m pip}
PY=${WHEEL_PYTHON:-3.11}
ARCH=${WHEEL_ARCH:-$(uname -m)}
case "$ARCH" in arm64) ARCH=aarch64 ;; amd64) ARCH=x86_64 ;; esac

# manylinux tags the image's glibc (2.36 in Debian bookworm) accepts, newest first: pip does
# not expand a manylinux_2_X tag to older ones by itself.
platforms=()
for minor in $(seq 36 -1 17); do platforms+=(--platform "manylinux_2_${minor}_${ARCH}"); done
platforms+=(--platform "manylinux2014_${ARCH}")

# The build backend, read from pyproject.toml (needs Python 3.11+ for tomllib).
mapfile -t backend < <(python3 - <<'EOF' 2>/dev/null || echo "setuptools>=68"
import tomllib
with open("pyproject.toml", "rb") as f:
    print("\n".join(tomllib.load(f)["build-system"]["requires"]))
EOF
)

mkdir -p "$DEST"
cp constraints.txt "$DEST/.constraints.txt"  # what this wheelhouse was made for
# shellcheck disable=SC2086  # PIP may be a command with arguments
$PIP download --quiet --only-binary=:all: --implementation cp --python-version "$PY" \
  "${platforms[@]}" --dest "$DEST" --requirement constraints.txt "${backend[@]}" wheel
echo "wheelhouse: $(find "$DEST" -name '*.whl' | wc -l) wheels in $DEST"
