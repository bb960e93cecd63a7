"""Pytest fixtures for tests that run the real vLLM CPU engine: its env and a tiny model."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.vllm import env

TINY_MODEL_SCRIPT = Path(__file__).with_name("tiny_model.py")
TINY_MODEL_SEED = 0


@pytest.fixture(scope="session")
def vllm_python() -> Path:
    """The vLLM env's Python, built on first use (a few minutes once, seconds after)."""
    return env.ensure_vllm_env()


def make_tiny_model(python: Path, out_dir: Path, *extra_args: str) -> Path:
    """Run tiny_model.py in the vLLM env's Python (it needs torch and transformers)."""
    command = [str(python), str(TINY_MODEL_SCRIPT), str(out_dir), "--seed", str(TINY_MODEL_SEED)]
    proc = subprocess.run(
        [*command, *extra_args], capture_output=True, text=True, env=env.subprocess_env()
    )
    if proc.returncode != 0:
        raise RuntimeError(f"making the tiny model failed:\n{proc.stderr[-5000:]}")
    return out_dir


@pytest.fixture(scope="session")
def tiny_model(vllm_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with a chat template (system, user, assistant), made once per
    session."""
    return make_tiny_model(vllm_python, tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_model_no_system(vllm_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same model with a chat template that rejects a system role."""
    out = tmp_path_factory.mktemp("tiny-model-no-system")
    return make_tiny_model(vllm_python, out, "--no-system-role")
