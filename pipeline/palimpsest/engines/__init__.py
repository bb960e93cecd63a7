"""Generation engines behind one small interface (see `base`).

`make_engine(EngineSettings(...))` (in `factory`) builds an in-process vLLM engine or an
OpenAI-compatible HTTP one. Importing this package is cheap: vLLM and httpx load only when an
engine is built.
"""

from palimpsest.engines.base import (
    BAD_REQUEST,
    ERROR_CODES,
    FINISH_LENGTH,
    FINISH_STOP,
    PROMPT_TOO_LONG,
    REQUEST_FAILED,
    ChatMessage,
    Completion,
    Engine,
    EngineDeadError,
    EngineError,
    EngineSettingsError,
    GenerationRequest,
    GenerationResult,
    SamplingSettings,
)
from palimpsest.engines.factory import make_engine
from palimpsest.engines.settings import EngineSettings

__all__ = [
    "BAD_REQUEST",
    "ERROR_CODES",
    "FINISH_LENGTH",
    "FINISH_STOP",
    "PROMPT_TOO_LONG",
    "REQUEST_FAILED",
    "ChatMessage",
    "Completion",
    "Engine",
    "EngineDeadError",
    "EngineError",
    "EngineSettings",
    "EngineSettingsError",
    "GenerationRequest",
    "GenerationResult",
    "SamplingSettings",
    "make_engine",
]
