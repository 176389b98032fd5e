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
	@echo "make demo   set up .venv, then shapes data -> VQ tokenizer -> BPE -> code shards -> unified model (~17 min)"
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

# The pipeline so far: shapes shards -> VQ tokenizer (5 min) -> its evaluation -> text BPE -> code shards
# -> the unified model (10 min, release folder runs/shapes/model).
demo: $(STAMP)
	$(PY) -m omni.data.shapes --out data/shapes --train 20000 --val 500 --per-shard 2000 --size 32 --seed 0
	$(PY) -m omni.eval.shapes --shards 'data/shapes/val-*.tar'
	$(PY) tokenizers/train_vq.py fit --config configs/shapes/vq.yaml --trainer.enable_progress_bar false
	$(PY) tokenizers/eval_vq.py --vq runs/shapes/vq --shards 'data/shapes/val-*.tar'
	$(PY) tokenizers/train_text.py --shards 'data/shapes/train-*.tar' --out runs/shapes/tokenizer.json
	$(PY) tokenizers/encode_shards.py --vq runs/shapes/vq --shards 'data/shapes/*.tar' --out data/shapes-codes --overwrite
	$(PY) train.py fit --config configs/shapes/model.yaml --trainer.enable_progress_bar false

bench: $(STAMP)
	$(PY) bench/data_throughput.py
	$(PY) bench/vq_throughput.py
	$(PY) bench/train_throughput.py

clean-data:
	rm -rf data/shapes data/shapes-codes runs/shapes
