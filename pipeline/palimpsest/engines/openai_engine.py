"""An engine that sends chat completions to an OpenAI-compatible HTTP endpoint.

This is how a rewrite stage uses a model it does not load itself: a `vllm serve` deployment
shared by many workers, or any server speaking `/v1/chat/completions`. It is also how stages
are tested against a scripted local server.

What it adds over a bare HTTP call:
- at most `max_in_flight` requests in flight (an asyncio.Semaphore), so a worker can hand it
  a whole shard without flooding the server; a request waiting to retry keeps its slot, so a
  struggling server gets less traffic, not more;
- retries with exponential backoff and jitter on 429, 5xx, timeouts and connection errors,
  honouring Retry-After, for a bounded number of attempts;
- a classification of failures that keeps records from being rejected for the server's
  faults (see `_Verdict`): only a failure that is about the request itself becomes a
  per-record error, while an endpoint that is gone or misconfigured raises EngineDeadError;
- token counts from the response's `usage`, never re-tokenised.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import random
import re
import time
from dataclasses import dataclass
from typing import Any, Final

import httpx

from palimpsest.engines.base import (
    BAD_REQUEST,
    PROMPT_TOO_LONG,
    REQUEST_FAILED,
    Completion,
    Engine,
    EngineDeadError,
    GenerationRequest,
    GenerationResult,
)
from palimpsest.engines.settings import EngineSettings

logger = logging.getLogger(__name__)

CHAT_COMPLETIONS_PATH: Final = "/chat/completions"

_CONTEXT_TOO_LONG = re.compile(
    r"context length|context window|maximum model length|too many tokens|prompt is too long"
    r"|reduce the length|input is too long",
    re.IGNORECASE,
)
"""How servers word "your prompt does not fit" in a 400 (vLLM, OpenAI and others)."""

_RETRY_STATUSES: Final = frozenset({408, 409, 429}) | frozenset(range(500, 600))
# Statuses that say the endpoint as a whole is unavailable, not that this request is bad.
_UNAVAILABLE_STATUSES: Final = frozenset({429, 502, 503, 504})
# Statuses that mean every request will fail: wrong key, wrong URL or model name.
_FATAL_STATUSES: Final = frozenset({401, 403, 404})


class _Verdict(enum.Enum):
    """What a failed attempt means for the request and the engine."""

    RETRY_REQUEST = "retry, then fail this request"  # 500s, timeouts: maybe this request
    RETRY_ENDPOINT = "retry, then declare the engine dead"  # 429/502-504, connection errors


@dataclass(frozen=True)
class _Retry:
    verdict: _Verdict
    reason: str
    retry_after: float | None = None


class OpenAIEngine(Engine):
    """Chat completions over HTTP. Build it with `make_engine`; `transport` is for tests."""

    def __init__(
        self,
        settings: EngineSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if settings.type != "openai" or not settings.base_url:
            raise ValueError("OpenAIEngine needs settings of type 'openai' with a base_url")
        self.settings = settings
        self.max_in_flight = settings.in_flight
        self._url = settings.base_url.rstrip("/") + CHAT_COMPLETIONS_PATH
        self._transport = transport
        self._rng = rng or random.Random()
        self._slots = asyncio.Semaphore(self.max_in_flight)
        self._client: httpx.AsyncClient | None = None
        self._started_at: float | None = None
        self._closed_at: float | None = None
        self._consecutive_failures = 0
        self._dead: EngineDeadError | None = None
        self._warned_no_usage = False

    async def start(self) -> None:
        if self._client is not None:
            return
        self._started_at = time.monotonic()
        self._closed_at = None
        headers = {"Content-Type": "application/json"}
        api_key = os.environ.get(self.settings.api_key_env)
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(
                self.settings.request_timeout, connect=self.settings.connect_timeout
            ),
            limits=httpx.Limits(
                max_connections=self.max_in_flight, max_keepalive_connections=self.max_in_flight
            ),
            transport=self._transport,
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
            self._closed_at = time.monotonic()

    @property
    def gpus(self) -> int:
        return 0  # the server's GPUs are not ours to count

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        if self._client is None:
            raise RuntimeError("engine not started: call start() or use `async with`")
        self._raise_if_dead()
        async with self._slots:
            self._raise_if_dead()
            result = await self._generate_with_retries(request)
        self._count_outcome(result)
        return result

    def payload(self, request: GenerationRequest) -> dict[str, Any]:
        """The JSON body of the chat completion request."""
        sampling = self.settings.sampling
        body: dict[str, Any] = {
            "model": self.settings.model,
            "messages": [m.as_dict() for m in request.messages],
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_tokens,
            "n": request.n or sampling.n,
        }
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        return body

    async def _generate_with_retries(self, request: GenerationRequest) -> GenerationResult:
        body = self.payload(request)
        retry: _Retry | None = None
        for attempt in range(1, self.settings.max_attempts + 1):
            if retry is not None:
                await asyncio.sleep(self._backoff(attempt - 1, retry.retry_after))
            outcome = await self._attempt(request.request_id, body)
            if isinstance(outcome, GenerationResult):
                return outcome
            retry = outcome
            logger.debug("request %s attempt %d: %s", request.request_id, attempt, retry.reason)
        assert retry is not None
        message = (
            f"request {request.request_id!r} failed {self.settings.max_attempts} times, "
            f"last: {retry.reason}"
        )
        if retry.verdict is _Verdict.RETRY_ENDPOINT:
            self._dead = EngineDeadError(f"endpoint {self._url} unavailable: {message}")
            raise self._dead
        logger.warning("%s", message)
        return GenerationResult.failed(request.request_id, REQUEST_FAILED)

    async def _attempt(self, request_id: str, body: dict[str, Any]) -> GenerationResult | _Retry:
        assert self._client is not None
        try:
            async with asyncio.timeout(self.settings.request_timeout):
                response = await self._client.post(self._url, json=body)
        except (TimeoutError, httpx.TimeoutException) as exc:
            if isinstance(exc, httpx.ConnectTimeout):
                return _Retry(_Verdict.RETRY_ENDPOINT, "connect timeout")
            return _Retry(_Verdict.RETRY_REQUEST, "timed out")
        except httpx.TransportError as exc:
            return _Retry(_Verdict.RETRY_ENDPOINT, f"{type(exc).__name__}: {exc}")
        return self._judge(request_id, response, n=int(body["n"]))

    def _judge(
        self, request_id: str, response: httpx.Response, n: int
    ) -> GenerationResult | _Retry:
        status = response.status_code
        if status == 200:
            return self._parse(request_id, response, n)
        message = _error_message(response)
        if status in _RETRY_STATUSES:
            verdict = (
                _Verdict.RETRY_ENDPOINT
                if status in _UNAVAILABLE_STATUSES
                else _Verdict.RETRY_REQUEST
            )
            return _Retry(verdict, f"HTTP {status}: {message}", _retry_after(response))
        if status in _FATAL_STATUSES:
            self._dead = EngineDeadError(f"{self._url} answered HTTP {status}: {message}")
            raise self._dead
        if status == 413 or (status in (400, 422) and _CONTEXT_TOO_LONG.search(message)):
            return GenerationResult.failed(request_id, PROMPT_TOO_LONG)
        logger.warning("request %s rejected, HTTP %d: %s", request_id, status, message)
        return GenerationResult.failed(request_id, BAD_REQUEST)

    def _parse(self, request_id: str, response: httpx.Response, n: int) -> GenerationResult:
        try:
            body = response.json()
            choices = sorted(body["choices"], key=lambda c: int(c.get("index", 0)))
            texts = [(c["message"].get("content") or "", str(c["finish_reason"])) for c in choices]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            logger.warning(
                "request %s: malformed response (%s): %.200s", request_id, exc, response.text
            )
            return GenerationResult.failed(request_id, REQUEST_FAILED)
        usage = body.get("usage") or {}
        if not usage and not self._warned_no_usage:
            logger.warning("%s returns no usage: token counts will be 0", self._url)
            self._warned_no_usage = True
        prompt_tokens = int(usage.get("prompt_tokens") or 0)
        per_choice = _split_tokens(int(usage.get("completion_tokens") or 0), len(texts))
        completions = tuple(
            Completion(text=text, finish_reason=reason, generated_tokens=tokens)
            for (text, reason), tokens in zip(texts, per_choice, strict=True)
        )
        if len(completions) != n:
            logger.warning(
                "request %s: asked for %d completions, got %d", request_id, n, len(completions)
            )
        return GenerationResult(request_id, prompt_tokens, completions)

    def _backoff(self, retries_so_far: int, retry_after: float | None) -> float:
        """Seconds before the next attempt: doubling from backoff_initial, capped, jittered
        over its upper half so that many waiting requests do not return at once."""
        cap = self.settings.backoff_max
        delay = min(cap, self.settings.backoff_initial * 2 ** (retries_so_far - 1))
        delay = self._rng.uniform(delay / 2, delay)
        if retry_after is not None:
            delay = max(delay, min(retry_after, cap))
        return delay

    def _count_outcome(self, result: GenerationResult) -> None:
        if result.error != REQUEST_FAILED:
            self._consecutive_failures = 0
            return
        self._consecutive_failures += 1
        if self._consecutive_failures >= self.settings.max_consecutive_failures:
            self._dead = EngineDeadError(
                f"{self._consecutive_failures} requests in a row failed after all retries "
                f"at {self._url}"
            )
            raise self._dead

    def _raise_if_dead(self) -> None:
        if self._dead is not None:
            raise EngineDeadError(str(self._dead))


def _split_tokens(total: int, parts: int) -> list[int]:
    """Share a completion-token total over `parts` completions.

    `usage` gives only the total when n > 1; the shares add up to it exactly, so per-record
    and per-shard sums stay equal to what the server reported.
    """
    if parts == 0:
        return []
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            return str(error.get("message") or error)[:500]
        return str(error)[:500]
    return str(body)[:500]


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff
