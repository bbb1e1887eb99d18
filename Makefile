# streamworker developer tasks. `make test` is what CI runs (.ci/run).
#
#   make venv         create .venv and install the package with its dev extras (again only when
#                     pyproject.toml changes)
#   make test         lint + type check + every test (tests/ and integration/, pyproject testpaths)
#   make lint         ruff check, ruff format --check, mypy
#   make unit         tests/ only
#   make integration  integration/ only (starts a local Tansu broker, or uses
#                     STREAMWORKER_TEST_BROKERS=host:port, e.g. Redpanda from integration/docker-compose.yml)
#   make demo         python -m streamworker.demo
#   make clean        remove .venv, caches and build output
#
# pytest's exit code 5 ("no tests collected") fails the target like any other non-zero code: on purpose.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := test
.PHONY: venv test lint unit integration demo clean

venv: $(STAMP)

# The stamp is touched only after a successful install, so a failed install is retried next time.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

define LINT
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
endef

lint: venv
	$(LINT)

test: venv
	$(LINT)
	$(BIN)/python -m pytest

unit: venv
	$(BIN)/python -m pytest tests

integration: venv
	$(BIN)/python -m pytest integration

demo: venv
	$(BIN)/python -m streamworker.demo

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
