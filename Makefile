# Every target works on a fresh machine: the virtualenv is created and refreshed on demand.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
CONTRIB := $(wildcard plugins_contrib/*/pyproject.toml)

.PHONY: install lint typecheck test demo clean

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

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
