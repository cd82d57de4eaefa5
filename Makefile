# Two set-up commands: `make train` (the primer's MNIST run) and `make test`.
# Both create .venv from pyproject.toml on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Where the four MNIST .gz files already are, if anywhere; otherwise torchvision downloads them.
MNIST_RAW ?= ../shared/datasets/MNIST/raw

.PHONY: help install data train test lint tensorboard bench clean

help: ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed ## create .venv with the project and its test tools

data: ## link local MNIST files (MNIST_RAW=...) into data/MNIST/raw, if there are any
	@if [ -d "$(MNIST_RAW)" ]; then \
		mkdir -p data/MNIST/raw && ln -sf "$(abspath $(MNIST_RAW))"/*.gz data/MNIST/raw/; \
	fi

train: install data ## train the primer's MNIST classifier (+experiment=mnist_sgd; more with ARGS=...)
	$(PY) -m src.train +experiment=mnist_sgd $(ARGS)

test: install ## lint, then run the test suite
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

lint: install ## ruff check and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

tensorboard: install ## open TensorBoard on every run under outputs/
	$(VENV)/bin/tensorboard --logdir outputs

bench: install data ## time the framework against plain PyTorch loops (outputs/bench/latest.md)
	$(PY) bench/bench.py $(ARGS)

clean: ## remove outputs/ (runs, checkpoints, curves)
	rm -rf outputs
