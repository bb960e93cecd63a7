"""The one interface every generation engine implements, and the values that cross it.

Rewrite stages only ever talk to an `Engine`: they send a `GenerationRequest` (chat messages)
and get back a `GenerationResult` with the engine's own token counts. Keeping this surface
small lets the same stage code run on in-process vLLM, on a `vllm serve` deployment or on any
OpenAI-compatible endpoint, and lets tests drive stages with a scripted server.

Failure contract:
- a problem with one request (prompt over the context budget, a request the server rejects,
  a request that kept failing after retries) is reported in `GenerationResult.error` with a
  short reason code and never raised, so one bad record never fails a shard;
- an engine that can no longer serve anything raises `EngineDeadError`; the worker lets it
  propagate and exits non-zero so the Job retries the index.
"""

from __future__ import annotations

import abc
import math
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self

# Per-request error codes (the values of `GenerationResult.error`).
PROMPT_TOO_LONG: Final = "prompt_too_long"
"""The prompt, with the chat template applied, leaves no room for `max_tokens` in the context."""
BAD_REQUEST: Final = "bad_request"
"""The engine or server rejected this request as invalid (and retrying will not help)."""
REQUEST_FAILED: Final = "request_failed"
"""The request kept failing for reasons outside it (timeouts, 5xx) until retries ran out."""
ERROR_CODES: Final = frozenset({PROMPT_TOO_LONG, BAD_REQUEST, REQUEST_FAILED})

# Finish reasons as the engines report them. Others a server may send pass through unchanged.
FINISH_STOP: Final = "stop"
FINISH_LENGTH: Final = "length"

ROLES: Final = frozenset({"system", "user", "assistant"})


class EngineError(Exception):
    """Base class of the errors an engine raises."""


class EngineDeadError(EngineError):
    """The engine cannot serve requests any more; the worker must exit non-zero."""


class EngineSettingsError(EngineError, ValueError):
    """An engine setting has a bad value; the message starts with the setting's name."""


@dataclass(frozen=True)
class ChatMessage:
    """One turn of a chat: `role` is 'system', 'user' or 'assistant'."""

    role: str
    content: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"chat message role must be one of {sorted(ROLES)}, got {self.role!r}")

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class SamplingSettings:
    """How completions are sampled. The defaults are the published rewrite settings.

    These decide the results, so all of them go into the stage id (see `palimpsest.identity`).
    """

    temperature: float = 0.2
    """Softmax temperature, >= 0 (0 is greedy). Published: 0.2."""
    top_p: float = 0.7
    """Nucleus sampling mass, in (0, 1]. Published: 0.7."""
    max_tokens: int = 8192
    """Most tokens generated per completion; the prompt budget is max_model_len minus this.
    Published: 8192."""
    n: int = 1
    """Completions per request unless the request asks for its own number."""
    seed: int | None = None
    """Per-request sampling seed; None leaves sampling unseeded."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise EngineSettingsError(f"sampling.temperature: must be >= 0, got {self.temperature}")
        if not (0 < self.top_p <= 1):
            raise EngineSettingsError(f"sampling.top_p: must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise EngineSettingsError(f"sampling.max_tokens: must be >= 1, got {self.max_tokens}")
        if self.n < 1:
            raise EngineSettingsError(f"sampling.n: must be >= 1, got {self.n}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "n": self.n,
            "seed": self.seed,
        }


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt to complete. `request_id` is the caller's (e.g. the record id), echoed back.

    `n` is how many completions to sample; None takes `SamplingSettings.n`.
    """

    request_id: str
    messages: tuple[ChatMessage, ...]
    n: int | None = None

    def __post_init__(self) -> None:
        if not self.messages:
            raise ValueError(f"request {self.request_id!r} has no messages")
        if self.n is not None and self.n < 1:
            raise ValueError(f"request {self.request_id!r}: n must be >= 1, got {self.n}")


@dataclass(frozen=True)
class Completion:
    """One sampled answer. `finish_reason` is 'stop' or 'length' (cut off at max_tokens)."""

    text: str
    finish_reason: str
    generated_tokens: int


@dataclass(frozen=True)
class GenerationResult:
    """What the engine did with one request.

    `prompt_tokens` is counted once however many completions were sampled; it and each
    completion's `generated_tokens` are the engine's own counts. When `error` is set the
    request was not served: there are no completions and `prompt_tokens` is 0.
    """

    request_id: str
    prompt_tokens: int
    completions: tuple[Completion, ...]
    error: str | None = None

    @property
    def generated_tokens(self) -> int:
        """Tokens generated over all completions."""
        return sum(c.generated_tokens for c in self.completions)

    @classmethod
    def failed(cls, request_id: str, error: str) -> GenerationResult:
        if error not in ERROR_CODES:
            raise ValueError(f"unknown error code {error!r}")
        return cls(request_id=request_id, prompt_tokens=0, completions=(), error=error)


class Engine(abc.ABC):
    """A running model that completes chat requests, many at a time.

    Use as `async with engine:` (or call `start()` and `close()`). `generate` may be awaited by
    many tasks at once; the engine itself keeps at most `max_in_flight` requests in flight and
    makes the others wait, so callers can simply submit everything they have.
    """

    max_in_flight: int
    """Most requests the engine works on at once; further callers wait their turn."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Load the model or open connections. Raises EngineDeadError if that fails."""

    @abc.abstractmethod
    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Complete one request. Per-request failures come back in `error`."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the model and connections. Safe to call more than once."""

    _started_at: float | None = None
    """monotonic() when `start()` began; set by implementations."""
    _closed_at: float | None = None
    """monotonic() when `close()` finished, None while running; set by implementations."""

    @property
    def engine_seconds(self) -> float:
        """Wall-clock seconds since `start()` began (loading included), frozen at `close()`."""
        if self._started_at is None:
            return 0.0
        end = self._closed_at if self._closed_at is not None else time.monotonic()
        return end - self._started_at

    @property
    @abc.abstractmethod
    def gpus(self) -> int:
        """Accelerators this engine holds (0 for CPU or a remote server); GPU-seconds is
        `engine_seconds * gpus`."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
