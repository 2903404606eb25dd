# Everything runs from the virtualenv in .venv/, created and filled on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test unit faults bench install clean
BENCH_STAMP := $(VENV)/.bench-stamp

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

## The service on its embedded default: local PostgreSQL + local Kafka, a demo clinic and an API key.
run: $(STAMP)
	$(BIN)/slotledger up --demo

## Every test, against a real PostgreSQL and a real Kafka broker.
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## The fault cases alone (each starts its own servers and crashes them under load; also part of `make test`).
faults: $(STAMP)
	$(BIN)/python -m pytest tests/faults -s $(PYTEST_ARGS)

## Domain tests only: no servers.
unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

## Benchmarks on a fresh local stack: figures, never a pass/fail. FULL=1 for the long run (see README).
bench: $(BENCH_STAMP)
	$(BIN)/python -m bench.run --profile $(if $(FULL),--full)

clean:
	rm -rf $(VENV) .slotledger .pytest_cache
