# Omni: `make demo` and `make test` are all a newcomer types. Each sets up .venv on first use.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Written after a successful install; the install re-runs only when these inputs change.
STAMP := $(VENV)/.omni-installed

.PHONY: help demo test lint bench clean-data

help:
	@echo "make demo   set up .venv, then shapes data -> VQ tokenizer -> BPE -> code shards -> model -> benchmark (~30 min)"
	@echo "make test   set up .venv, lint, run the test suite"
	@echo "make bench  set up .venv, run the benchmarks in bench/"

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "Installing omni and its dependencies into $(VENV) (first run only, a few minutes)..."
	@# The machine's pip config lists local wheel folders that may not hold every package;
	@# pip warns about each one, which is noise here.
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]' 2>&1 | { grep -v 'is ignored: it is neither' || true; }
	@touch $@

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# The whole pipeline (omni/demo.py lists the stages): shapes shards -> VQ tokenizer -> its evaluation
# -> text BPE -> code shards -> unified model -> benchmark -> samples; summary in demo/summary.json.
# Resume from a stage with `.venv/bin/python -m omni.demo --from STAGE`.
demo: $(STAMP)
	$(PY) -m omni.demo

bench: $(STAMP)
	$(PY) bench/data_throughput.py
	$(PY) bench/vq_throughput.py
	$(PY) bench/train_throughput.py
	$(PY) bench/sample_throughput.py

clean-data:
	rm -rf data/shapes data/shapes-codes runs/shapes
