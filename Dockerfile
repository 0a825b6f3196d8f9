# One image for the Grain executor, workers and operator:
#   grain executor ... | grain worker ... | python -m grain_operator ...
#
#   docker build -t grain:dev .                                   (or: make image)
#   make wheelhouse && docker build --build-arg OFFLINE=1 -t grain:dev .    (air-gapped)
#
# Build arguments:
#   BASE_IMAGE  a Debian-based image with Python 3.11+, pip and venv (default python:3.11-slim;
#               scripts/base-image.sh makes a stand-in from Debian's packages)
#   OFFLINE     1: install every Python package from ./build/wheelhouse only (pip --no-index);
#               `make wheelhouse` fills it. Otherwise from the package index pip is set up for.
# Dependencies are pinned by constraints.txt (scripts/gen_constraints.py writes it from the
# tested environment). Everything is installed into a virtual environment, /opt/grain, built in
# the first stage and copied whole into the second: the final image holds no wheelhouse, pip
# cache or build tools. Only classic-builder instructions are used (no `# syntax=` line, which
# would make BuildKit pull a frontend image from a registry), so it builds without a registry.
# See docs/install.md, "Building the image".

ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ARG OFFLINE=0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Third-party dependencies first, in their own layers: they change only with constraints.txt
# (or the wheelhouse). The globs make build/wheelhouse optional: they match nothing when it is
# absent (a glob only in the last part fails in BuildKit when build/ itself is missing).
COPY constraints.txt buil[d]/wheelhous[e] /wheelhouse/
RUN if [ "$OFFLINE" = 1 ]; then set -- --no-index --find-links /wheelhouse; fi \
 && python3 -m venv /opt/grain \
 && /opt/grain/bin/pip install "$@" --requirement /wheelhouse/constraints.txt
WORKDIR /src
COPY pyproject.toml README.md ./
COPY grain ./grain
COPY operator ./operator
# The project itself; its build backend (setuptools) comes from the same place as the rest.
RUN if [ "$OFFLINE" = 1 ]; then set -- --no-index --find-links /wheelhouse; fi \
 && /opt/grain/bin/pip install "$@" --constraint /wheelhouse/constraints.txt ".[operator]" \
 && /opt/grain/bin/pip check \
 && /opt/grain/bin/grain --help >/dev/null \
 && /opt/grain/bin/python -c "import grain_operator"

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="grain" \
      org.opencontainers.image.description="Grain executor, worker and Kubernetes operator" \
      org.opencontainers.image.licenses="MIT"
# TMPDIR is set explicitly: with a read-only root file system, /tmp must be a mount (the
# operator renders an emptyDir there); see docs/install.md for running without one.
ENV PATH=/opt/grain/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TMPDIR=/tmp
RUN groupadd --gid 10001 grain \
 && useradd --uid 10001 --gid grain --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin grain
COPY --from=build /opt/grain /opt/grain
WORKDIR /tmp
USER 10001:10001
# grain:// (executor, or a passive worker) and HTTP (/healthz, /status, /metrics)
EXPOSE 4242 8080
ENTRYPOINT ["grain"]
CMD ["--help"]
