"""Build the engine the settings ask for, importing its heavy dependencies only then."""

from __future__ import annotations

from palimpsest.engines.base import Engine
from palimpsest.engines.settings import EngineSettings


def make_engine(settings: EngineSettings) -> Engine:
    """A new, not yet started engine for the settings."""
    if settings.type == "vllm":
        from palimpsest.engines.vllm_engine import VllmEngine

        return VllmEngine(settings)
    from palimpsest.engines.openai_engine import OpenAIEngine

    return OpenAIEngine(settings)
