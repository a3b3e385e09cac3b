# voicehub: the two set-up commands (`make run`, `make test`) and a few helpers.
# Every target creates/updates .venv itself, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_STAMP := $(VENV)/.stamp-run
DEV_STAMP := $(VENV)/.stamp-dev
ARGS ?=

.PHONY: run test test-slow lint typecheck bench clean

$(BIN)/python:
	@$(PYTHON) -m venv $(VENV) || (apt-get update -qq && apt-get install -y -qq python3-venv && $(PYTHON) -m venv $(VENV))
	@$(BIN)/python -m pip install -q --upgrade pip

$(RUN_STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install -q -c constraints.txt -e .
	@touch $@

$(DEV_STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	@touch $@ $(RUN_STAMP)

run: $(RUN_STAMP)
	$(BIN)/voicehub serve $(ARGS)

lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(DEV_STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest

test-slow: $(DEV_STAMP)
	$(BIN)/pytest -m slow

bench: $(RUN_STAMP)
	$(BIN)/python bench/core_bench.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
