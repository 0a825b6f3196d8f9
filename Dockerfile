# syntax=docker/dockerfile:1
# One image for the Grain executor, workers and operator:
#   grain executor ... | grain worker ... | python -m grain_operator ...
# Dependencies are pinned by constraints.txt (scripts/gen_constraints.py writes it from the
# tested environment). Built by .github/workflows/e2e.yml:  docker build -t grain:dev .

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md* ./
COPY grain ./grain
COPY operator ./operator
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
LABEL org.opencontainers.image.title="grain" \
      org.opencontainers.image.description="Grain executor, worker and Kubernetes operator" \
      org.opencontainers.image.licenses="MIT"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN groupadd --system --gid 10001 grain \
 && useradd --system --uid 10001 --gid grain --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin grain
# Third-party dependencies first, in their own layer: it changes only with constraints.txt.
COPY constraints.txt /tmp/constraints.txt
RUN pip install --requirement /tmp/constraints.txt
COPY --from=build /wheels /tmp/wheels
RUN pip install --constraint /tmp/constraints.txt "$(ls /tmp/wheels/grain-*.whl)[operator]" \
 && pip check \
 && rm -rf /tmp/wheels /tmp/constraints.txt \
 && grain --help >/dev/null \
 && python -c "import grain_operator"
WORKDIR /tmp
USER 10001:10001
# grain:// (executor, or a passive worker) and HTTP (/healthz, /status, /metrics)
EXPOSE 4242 8080
ENTRYPOINT ["grain"]
CMD ["--help"]
