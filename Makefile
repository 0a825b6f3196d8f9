# Grain developer entry points. Every target creates .venv itself when it is missing.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.stamp

.PHONY: demo test test-fast lint crd docs manifests bench bench-quick clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP)-core: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(STAMP)-test: pyproject.toml scripts/system-deps.sh | $(BIN)/python
	$(BIN)/pip install -q -e '.[test,operator]'
	./scripts/system-deps.sh
	touch $@

$(STAMP)-bench: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[bench]'
	touch $@

demo: $(STAMP)-core
	$(BIN)/python examples/demo.py

test: lint
	$(BIN)/python -m pytest tests --durations=25

test-fast: $(STAMP)-test
	$(BIN)/python -m pytest tests/unit -q

# ruff; mypy --strict over grain/ and the operator ([tool.mypy]); the import layering
# ([tool.importlinter], see docs/architecture.md)
lint: $(STAMP)-test
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

crd: $(STAMP)-test
	$(BIN)/python -m grain_operator.crd --write

docs: $(STAMP)-test
	$(BIN)/python -m grain_operator.docs --write

manifests: $(STAMP)-test
	$(BIN)/python scripts/render_manifests.py --write

bench: $(STAMP)-bench
	$(BIN)/python -m bench.run

bench-quick: $(STAMP)-bench
	$(BIN)/python -m bench.run --quick

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache

# -- The container image (docs/install.md, "Building the image") ------------------------------
#   make image [IMAGE=grain:dev] [BASE_IMAGE=python:3.11-slim] [OFFLINE=1]
#   make wheelhouse     every wheel the image installs, into build/wheelhouse (for OFFLINE=1)
# With no Docker engine running: scripts/container-engine.sh start, then export the DOCKER_HOST
# it prints. Without a registry: BASE_IMAGE=$$(scripts/base-image.sh) builds on Debian's Python.
.PHONY: image wheelhouse
IMAGE              ?= grain:dev
BASE_IMAGE         ?= python:3.11-slim
OFFLINE            ?= 0
DOCKER             ?= docker
DOCKER_BUILD_FLAGS ?= --network host

image:
	$(DOCKER) build $(DOCKER_BUILD_FLAGS) --build-arg BASE_IMAGE=$(BASE_IMAGE) \
	  --build-arg OFFLINE=$(OFFLINE) -t $(IMAGE) .

wheelhouse: | $(BIN)/python
	PIP="$(BIN)/python -m pip" ./scripts/wheelhouse.sh build/wheelhouse
