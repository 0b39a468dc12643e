# Set-up is part of each target, on a fresh clone too: `make serve` creates the virtual
# environment with only what serving needs (torch, then the package's base dependencies);
# `make test` and the other targets add the dev extras (tests, training, evaluation).
#   make serve HOST=0.0.0.0 PORT=9000
#   make serve TORCH_INDEX=https://download.pytorch.org/whl/cpu   # see the README: torch build
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
# The torch release every test here runs on; the Dockerfile installs the same (a test checks).
TORCH_VERSION ?= 2.13.0
# Empty: pip's configured index decides which build of torch it gets (README, "Set-up").
TORCH_INDEX ?=
SERVE_STAMP := $(VENV)/.installed-serve
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: help setup serve test test-fast lint bench-train bench-service stress prepare docker-check mutate mutate-report
.DEFAULT_GOAL := help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## /  make \1\t/' | expand -t 24

$(SERVE_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -e .
	touch $@

$(DEV_STAMP): $(SERVE_STAMP)
	$(PY) -m pip install -e ".[dev]"
	touch $@

setup: $(DEV_STAMP)  ## create .venv with the dev extras (tests, training, evaluation)

serve: $(SERVE_STAMP)  ## the service with the default checkpoint on http://$(HOST):$(PORT)
	$(PY) -m service --host $(HOST) --port $(PORT)

test: lint  ## lint + the whole test suite (what CI runs)
	$(PY) -m pytest -q

lint: $(DEV_STAMP)  ## ruff check, ruff format --check and mypy (pyproject.toml: [tool.mypy])
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

test-fast: $(DEV_STAMP)  ## the suite without the tests marked slow (end-to-end servers, browser, multi-process)
	$(PY) -m pytest -q -m "not slow"

prepare: $(DEV_STAMP)  ## the Switchboard corpus into runs/data/switchboard (from ../shared/data)
	$(PY) -m training.prepare --out runs/data/switchboard

bench-train: $(DEV_STAMP) prepare  ## training examples/s (benchmarks/train_throughput.py)
	$(PY) benchmarks/train_throughput.py

bench-service: $(DEV_STAMP)  ## the service under load (benchmarks/service_load.py)
	$(PY) benchmarks/service_load.py

stress: $(DEV_STAMP)  ## hostile input, overload, slow clients against a real server, its targets checked; STRESS_ARGS=--quick
	$(PY) benchmarks/stress.py --check $(STRESS_ARGS)

# Only the standard library and the system's python3: it runs before any virtual environment.
docker-check:  ## build the image on a local Debian base, run and probe it, then remove it (root)
	$(PYTHON) deploy/docker_check.py

# Mutation testing (docs/testing.md): the objective and the BN (model/cvae.py), the text rules
# (model/text.py), the metrics (eval/metrics.py), and the service's admission and limits. CPU
# heavy (hours on 2 cores for all of it); MUTANTS= runs a subset, e.g. MUTANTS='model.text.*'.
MUTANTS ?= model.cvae.* model.text.* eval.metrics.* service.app.xǁBodyLimitMiddlewareǁ* \
	service.server.xǁLimitedHttpToolsProtocolǁ* service.engine.xǁInferenceEngineǁ_admit* \
	service.engine.xǁDecodeCostǁ* service.config.xǁServiceConfigǁ__post_init__*
mutate: $(DEV_STAMP)  ## mutmut over MUTANTS (niced, one worker, one torch thread)
	OMP_NUM_THREADS=1 nice -n 10 $(PY) -m mutmut run --max-children 1 $(foreach m,$(MUTANTS),'$(m)')

mutate-report: $(DEV_STAMP)  ## the surviving mutants of the last make mutate
	$(PY) -m mutmut results
