# Set-up is part of each target: on a fresh machine `make serve` or `make test` creates the
# virtual environment, installs the CPU build of torch from the pinned wheel first (so no
# multi-GB CUDA build is pulled), then this package with its dev extras.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup serve test lint bench-train bench-service stress prepare

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

serve: $(STAMP)  ## the service with the default checkpoint on http://127.0.0.1:8000
	$(PY) -m service

test: $(STAMP)  ## lint + the whole test suite (what CI runs)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q

prepare: $(STAMP)
	$(PY) -m training.prepare --out runs/data/switchboard

bench-train: $(STAMP) prepare
	$(PY) benchmarks/train_throughput.py

bench-service: $(STAMP)
	$(PY) benchmarks/service_load.py

stress: $(STAMP)  ## hostile input, overload, slow clients against a real server; STRESS_ARGS=--quick
	$(PY) benchmarks/stress.py $(STRESS_ARGS)
