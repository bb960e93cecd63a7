"""The engine interface's values, settings parsing and the factory; no engine is run here."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from types import SimpleNamespace
from typing import Any

import pytest

from palimpsest.engines import (
    PROMPT_TOO_LONG,
    ChatMessage,
    Completion,
    EngineDeadError,
    EngineSettings,
    EngineSettingsError,
    GenerationRequest,
    GenerationResult,
    SamplingSettings,
    make_engine,
)
from palimpsest.engines.openai_engine import OpenAIEngine
from palimpsest.engines.settings import SpeculativeSettings
from palimpsest.engines.vllm_engine import VllmEngine, fold_system_into_user


def test_sampling_defaults_are_the_published_ones() -> None:
    s = SamplingSettings()
    assert (s.temperature, s.top_p, s.max_tokens, s.n, s.seed) == (0.2, 0.7, 8192, 1, None)


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"temperature": -1}, "sampling.temperature"),
        ({"top_p": 0}, "sampling.top_p"),
        ({"top_p": 1.5}, "sampling.top_p"),
        ({"max_tokens": 0}, "sampling.max_tokens"),
        ({"n": 0}, "sampling.n"),
    ],
)
def test_bad_sampling_values_name_the_field(values: dict[str, Any], field: str) -> None:
    with pytest.raises(EngineSettingsError, match=f"^{field}:"):
        SamplingSettings(**values)


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"type": "tgi"}, "type"),
        ({"model": ""}, "model"),
        ({"max_in_flight": 0}, "max_in_flight"),
        ({"tensor_parallel_size": 0}, "tensor_parallel_size"),
        ({"gpu_memory_utilization": 1.5}, "gpu_memory_utilization"),
        ({"max_model_len": 1}, "max_model_len"),
        ({"type": "openai"}, "base_url"),
        ({"type": "openai", "base_url": "http://x/v1", "max_attempts": 0}, "max_attempts"),
        ({"type": "openai", "base_url": "http://x/v1", "request_timeout": 0}, "request_timeout"),
        ({"type": "openai", "base_url": "http://x/v1", "backoff_max": 0.1}, "backoff_max"),
    ],
)
def test_bad_engine_settings_name_the_field(values: dict[str, Any], field: str) -> None:
    base: dict[str, Any] = {"type": "vllm", "model": "m"}
    with pytest.raises(EngineSettingsError, match=f"^{field}:"):
        EngineSettings(**{**base, **values})


def test_speculative_decoding_reaches_vllm_as_its_speculative_config() -> None:
    spec = SpeculativeSettings(num_speculative_tokens=6, prompt_lookup_max=3, prompt_lookup_min=2)
    engine = VllmEngine(EngineSettings(type="vllm", model="org/m", speculative=spec))
    engine._vllm = SimpleNamespace(AsyncEngineArgs=dict)
    args = engine._engine_args("org/m")
    assert args["speculative_config"] == {
        "method": "ngram",
        "num_speculative_tokens": 6,
        "prompt_lookup_max": 3,
        "prompt_lookup_min": 2,
    }
    plain = VllmEngine(EngineSettings(type="vllm", model="org/m"))
    plain._vllm = engine._vllm
    assert "speculative_config" not in plain._engine_args("org/m")


def test_a_prefix_cache_reset_needs_a_running_engine() -> None:
    engine = VllmEngine(EngineSettings(type="vllm", model="org/m"))
    with pytest.raises(EngineDeadError, match="not running"):
        asyncio.run(engine.reset_prefix_cache())


def test_speculative_config_is_set_only_through_its_own_setting() -> None:
    with pytest.raises(EngineSettingsError, match=r"^engine_args: set speculative decoding"):
        EngineSettings(type="vllm", model="m", engine_args={"speculative_config": {}})


def test_in_flight_defaults_per_engine_type() -> None:
    assert EngineSettings(type="vllm", model="m").in_flight == 512
    assert EngineSettings(type="openai", model="m", base_url="http://h/v1").in_flight == 64
    assert EngineSettings(type="vllm", model="m", max_in_flight=3).in_flight == 3


def test_factory_builds_the_right_engine_without_loading_anything() -> None:
    vllm = make_engine(EngineSettings(type="vllm", model="/models/x", max_in_flight=8))
    assert isinstance(vllm, VllmEngine)
    assert vllm.max_in_flight == 8
    assert vllm.engine_seconds == 0.0
    openai = make_engine(EngineSettings(type="openai", model="m", base_url="http://h/v1"))
    assert isinstance(openai, OpenAIEngine)


def test_importing_the_engines_loads_neither_vllm_nor_httpx() -> None:
    code = (
        "import sys, palimpsest.engines, palimpsest.prompts\n"
        "from palimpsest.engines import make_engine, EngineSettings\n"
        "make_engine(EngineSettings(type='vllm', model='m'))\n"
        "print(sorted(m for m in ('vllm', 'httpx', 'torch') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_fold_system_into_the_first_user_turn() -> None:
    messages = (
        ChatMessage("system", "rules"),
        ChatMessage("user", "question"),
        ChatMessage("assistant", "answer"),
        ChatMessage("user", "again"),
    )
    assert fold_system_into_user(messages) == (
        ChatMessage("user", "rules\n\nquestion"),
        ChatMessage("assistant", "answer"),
        ChatMessage("user", "again"),
    )
    plain = (ChatMessage("user", "q"),)
    assert fold_system_into_user(plain) == plain


def test_values_check_themselves() -> None:
    with pytest.raises(ValueError, match="role"):
        ChatMessage("tool", "x")
    with pytest.raises(ValueError, match="no messages"):
        GenerationRequest("r", ())
    failed = GenerationResult.failed("r", PROMPT_TOO_LONG)
    assert (failed.prompt_tokens, failed.completions, failed.error) == (0, (), PROMPT_TOO_LONG)
    with pytest.raises(ValueError, match="unknown error code"):
        GenerationResult.failed("r", "oops")
    result = GenerationResult(
        "r", 5, (Completion("a", "stop", 2), Completion("b", "length", 3)), None
    )
    assert result.generated_tokens == 5
