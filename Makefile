# Entry points: `make demo` runs the sidecar end to end, `make test` runs every test.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-unit lint proto bench bench-pool clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

proto: $(STAMP)
	$(PY) scripts/gen_proto.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: $(STAMP)
	scripts/kafka-local fetch
	$(MAKE) lint
	$(PY) -m pytest

test-unit: $(STAMP)
	$(PY) -m pytest -m "not integration and not deploy"

demo: $(STAMP)
	scripts/kafka-local fetch
	$(PY) scripts/demo.py

bench: $(STAMP)
	scripts/kafka-local fetch
	$(PY) bench/pool_bench.py
	$(PY) bench/throughput.py $(BENCH_ARGS)

bench-pool: $(STAMP)
	$(PY) bench/pool_bench.py

clean:
	rm -rf $(VENV) .cache .mypy_cache .ruff_cache .pytest_cache .demo
