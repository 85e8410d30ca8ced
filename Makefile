# Entry points: `make demo` runs the sidecar end to end, `make test` runs every test.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-unit lint proto bench broker-start broker-stop clean

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
	$(PY) -m tagging_sidecar.cli bench

clean:
	rm -rf $(VENV) .cache .mypy_cache .ruff_cache .pytest_cache .demo
