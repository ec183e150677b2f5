# Every target works on a fresh machine: the virtualenv is created and refreshed on demand.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
CONTRIB := $(wildcard plugins_contrib/*/pyproject.toml)

.PHONY: install lint typecheck test demo bench clean

$(STAMP): pyproject.toml $(CONTRIB)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]" $(addprefix -e ,$(dir $(CONTRIB)))
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

typecheck: install
	$(BIN)/mypy
	$(BIN)/mypy $(foreach p,$(dir $(CONTRIB)),$(wildcard $(p)llmbackend_*))

test: lint typecheck
	$(BIN)/pytest -q

demo: install
	$(BIN)/llmbackend demo

# The comparison with raw clients and peer SDKs (benchmarks/README.md). The peers get a
# virtualenv of their own, with llmbackend from this checkout; BENCH_ARGS=--quick for a
# one-minute smoke run.
PEERS_VENV ?= benchmarks/.venv-peers
PEERS_STAMP := $(PEERS_VENV)/.installed-stamp

$(PEERS_STAMP): benchmarks/requirements-peers.txt pyproject.toml
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PEERS_VENV)/bin/python -m pip install --quiet -r benchmarks/requirements-peers.txt -e .
	touch $(PEERS_STAMP)

bench: install $(PEERS_STAMP)
	$(PEERS_VENV)/bin/python benchmarks/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(PEERS_VENV) .mypy_cache .ruff_cache .pytest_cache
