# Palimpsest developer entry points. The README's two commands are `make quickstart` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXTRAS := filter,analyze,dev

.PHONY: setup quickstart test test-unit test-integration lint bench-filter cluster-build cluster-up cluster-down clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $(STAMP)

# Filter the bundled sample corpus on this machine; outputs land in out/quickstart/.
quickstart: setup
	$(VENV)/bin/palimpsest filter examples/data/python-sample.jsonl.gz out/quickstart/kept.jsonl \
		--rejects out/quickstart/rejects.jsonl --stats out/quickstart/stats.json

lint: setup
	$(VENV)/bin/ruff check pipeline tests benchmarks
	$(VENV)/bin/ruff format --check pipeline tests benchmarks
	$(VENV)/bin/mypy

test-unit: setup
	$(PY) -m pytest tests/unit -q

test-integration: setup
	$(PY) -m pytest tests/integration -q

# Everything CI runs: static checks, then every test (the tests start the services they use).
test: setup lint
	$(PY) -m pytest tests -q

bench-filter: setup
	$(PY) benchmarks/filter_speed.py

clean:
	rm -rf $(VENV) out .mypy_cache .ruff_cache .pytest_cache
