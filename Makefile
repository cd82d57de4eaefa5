# Two set-up commands: `make train` (the primer's MNIST run) and `make test`.
# Both create .venv from pyproject.toml on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Where the four MNIST .gz files already are, if anywhere; otherwise torchvision downloads them.
MNIST_RAW ?= ../shared/datasets/MNIST/raw
# Tests at once (pytest-xdist): much of a test is a training process starting up on one core.
TEST_WORKERS ?= 2

.PHONY: help install lock data train test test-fast lint tensorboard bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-12s %s\n", $$1, $$2}'

# The exact versions tested (pyproject.toml keeps the ranges): installed as constraints, so each
# install takes from the lock only what it needs.
LOCK := requirements.lock

# The install stamps are named by the content of pyproject.toml and the lock, not compared by
# file time: a fresh clone (new times, same content) keeps its venv, an edit makes a new one.
CONTENT := $(shell cat pyproject.toml $(LOCK) | cksum | cut -d' ' -f1)
INSTALLED := $(VENV)/.installed-$(CONTENT)
DEV := $(VENV)/.dev-$(CONTENT)

$(INSTALLED):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c $(LOCK) -e .
	rm -f $(VENV)/.installed* $(VENV)/.dev*
	touch $@

$(DEV): $(INSTALLED)
	$(PY) -m pip install --quiet -c $(LOCK) -e ".[dev]"
	touch $@

install: $(INSTALLED) ## create .venv with the project (the versions in requirements.lock)

lock: ## refresh requirements.lock: the newest versions pyproject.toml allows, in a fresh venv
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --upgrade pip
	.lock-venv/bin/pip install --quiet -e ".[dev]"
	.lock-venv/bin/pip freeze --exclude-editable > $(LOCK)
	rm -rf .lock-venv

data: ## link local MNIST files (MNIST_RAW=...) into data/MNIST/raw, if there are any
	@if [ -d "$(MNIST_RAW)" ]; then \
		mkdir -p data/MNIST/raw && ln -sf "$(abspath $(MNIST_RAW))"/*.gz data/MNIST/raw/; \
	fi

train: install data ## train the primer's MNIST classifier (+experiment=mnist_sgd; more with ARGS=...)
	$(PY) -m src.train +experiment=mnist_sgd $(ARGS)

test: $(DEV) data ## lint, then run the whole test suite
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -n $(TEST_WORKERS)

test-fast: $(DEV) data ## the tests not marked slow (a minute and a half)
	$(PY) -m pytest -n $(TEST_WORKERS) -m "not slow"

lint: $(DEV) ## ruff check and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

tensorboard: install ## open TensorBoard on every run under outputs/
	$(VENV)/bin/tensorboard --logdir outputs

bench: install data ## time the framework against plain PyTorch loops (outputs/bench/latest.md)
	$(PY) bench/bench.py $(ARGS)

clean: ## remove outputs/ (runs, checkpoints, curves)
	rm -rf outputs
