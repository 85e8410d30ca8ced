# Entry points: `make demo` runs the sidecar end to end, `make test` runs every test.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-unit lint proto lock bench bench-pool bench-single clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

proto: $(STAMP)
	$(PY) scripts/gen_proto.py

# The container image's locks: every package pinned with the hashes of all its files on PyPI.
PIP_COMPILE := $(VENV)/bin/pip-compile --quiet --generate-hashes --strip-extras --allow-unsafe \
	--no-emit-index-url --no-emit-find-links
lock: $(STAMP)
	$(PIP_COMPILE) --output-file requirements.lock pyproject.toml
	$(PIP_COMPILE) --only-build-deps --all-build-deps --output-file requirements-build.lock pyproject.toml

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

# What a StreamMetric call costs the client, path by path, against the Go sink (needs `go`).
bench-single: $(STAMP)
	$(PY) bench/single_mode.py

clean:
	rm -rf $(VENV) .cache .mypy_cache .ruff_cache .pytest_cache .demo
