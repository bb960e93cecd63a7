"""vLLM in-process, driven as a stream of concurrent requests through its async engine.

Each `generate` call renders the chat with the model's own template, checks the prompt against
the context budget, and submits one request to vLLM's AsyncLLM; vLLM's scheduler batches
whatever is in flight (continuous batching), so callers keep up to `max_in_flight` requests
submitted and the GPUs never wait for the slowest member of a static batch. Nothing here calls
the blocking whole-batch `LLM.generate`: it cannot stream results for checkpointing, and one
over-long prompt would fail the whole batch.

Prompts are tokenised here, once, with the chat template applied, and passed to vLLM as token
ids: the count that decides `prompt_too_long` is then exactly the count vLLM runs, and the
token counts reported back are vLLM's own (prompt_token_ids and each completion's token_ids).

vLLM is imported only in `start()`, so `palimpsest.engines` imports without it.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from palimpsest.engines.base import (
    BAD_REQUEST,
    PROMPT_TOO_LONG,
    REQUEST_FAILED,
    ChatMessage,
    Completion,
    Engine,
    EngineDeadError,
    EngineSettingsError,
    GenerationRequest,
    GenerationResult,
)
from palimpsest.engines.model_source import is_s3, resolve_model
from palimpsest.engines.settings import EngineSettings

logger = logging.getLogger(__name__)


class _TemplateRejected(Exception):
    """The chat template raised on these messages."""


class VllmEngine(Engine):
    """One vLLM AsyncLLM in this process (plus the worker processes vLLM starts itself)."""

    def __init__(self, settings: EngineSettings) -> None:
        if settings.type != "vllm":
            raise ValueError("VllmEngine needs settings of type 'vllm'")
        self.settings = settings
        self.max_in_flight = settings.in_flight
        self._slots = asyncio.Semaphore(self.max_in_flight)
        self._ids = itertools.count()
        self._llm: Any = None
        self._vllm: Any = None  # the vllm names used per request, bound in start()
        self._tokenizer: Any = None
        self._max_model_len = 0
        self._fold_system = False
        self._on_cpu = False
        self._started_at: float | None = None
        self._closed_at: float | None = None
        self.load_seconds = 0.0
        """Seconds start() took: model download, load and engine warm-up."""

    async def start(self) -> None:
        if self._llm is not None:
            return
        self._started_at = time.monotonic()
        self._closed_at = None
        try:
            model_path = await asyncio.to_thread(
                resolve_model, self.settings.model, self.settings.model_cache_dir
            )
            self._vllm = _VllmApi.load()
            self._llm = self._vllm.AsyncLLM.from_engine_args(self._engine_args(model_path))
            tokenizer = self._llm.get_tokenizer()
            self._tokenizer = await tokenizer if inspect.isawaitable(tokenizer) else tokenizer
        except Exception as exc:
            raise EngineDeadError(f"vLLM failed to start on {self.settings.model}: {exc}") from exc
        self._max_model_len = int(self._llm.model_config.max_model_len)
        self._on_cpu = bool(self._vllm.current_platform.is_cpu())
        self._warn_seeded_chunked_prefill_on_cpu()
        if self.prompt_budget < 1:
            await self.close()
            raise EngineSettingsError(
                f"sampling.max_tokens: {self.settings.sampling.max_tokens} leaves no room for "
                f"a prompt in the model's context of {self._max_model_len} tokens"
            )
        self.load_seconds = time.monotonic() - self._started_at
        logger.info(
            "vLLM %s ready in %.1f s: %s, max_model_len %d, prompt budget %d tokens",
            self._vllm.version,
            self.load_seconds,
            model_path,
            self._max_model_len,
            self.prompt_budget,
        )

    async def reset_prefix_cache(self) -> bool:
        """Drop the KV blocks kept for earlier prompts' prefixes, so what runs next starts from
        an empty prefix cache (a benchmark that runs the same prompts again times each run
        from the same state). False when vLLM refused: it keeps the cache while requests run."""
        if self._llm is None:
            raise EngineDeadError("the engine is not running")
        return bool(await self._llm.reset_prefix_cache())

    async def close(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None
            self._closed_at = time.monotonic()

    def _warn_seeded_chunked_prefill_on_cpu(self) -> None:
        # vLLM's CPU build (0.32) rewinds a seeded request's random generator when a chunked
        # prefill discards its sampled token, which CPU generators cannot do: the engine dies.
        scheduler = self._llm.vllm_config.scheduler_config
        chunked = bool(getattr(scheduler, "enable_chunked_prefill", False))
        if self._on_cpu and chunked and self.settings.sampling.seed is not None:
            logger.warning(
                "seeded sampling with chunked prefill can kill vLLM's CPU engine; pass "
                "engine_args enable_chunked_prefill=False (and max_num_batched_tokens >= "
                "max_model_len)"
            )

    @property
    def prompt_budget(self) -> int:
        """Most prompt tokens (chat template applied) that leave room for max_tokens."""
        return self._max_model_len - self.settings.sampling.max_tokens

    @property
    def gpus(self) -> int:
        return 0 if self._on_cpu else self.settings.tensor_parallel_size

    def prompt_token_ids(self, messages: Sequence[ChatMessage]) -> list[int]:
        """The token ids vLLM runs for these messages: the model's chat template applied,
        with the generation prompt, and the system turn folded into the user turn for a
        template that rejects a system role. Raises _TemplateRejected."""
        if self._tokenizer is None:
            raise RuntimeError("engine not started")
        if not self._fold_system:
            try:
                return self._apply_template(messages)
            except _TemplateRejected:
                if not any(m.role == "system" for m in messages):
                    raise
            folded = fold_system_into_user(messages)
            ids = self._apply_template(folded)  # raises if folding does not help either
            logger.warning("the chat template rejects a system role: folding it into the user turn")
            self._fold_system = True
            return ids
        return self._apply_template(fold_system_into_user(messages))

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        llm = self._running()
        try:
            prompt_ids = self.prompt_token_ids(request.messages)
        except _TemplateRejected as exc:
            logger.warning("request %s: chat template failed: %s", request.request_id, exc)
            return GenerationResult.failed(request.request_id, BAD_REQUEST)
        if len(prompt_ids) > self.prompt_budget:
            return GenerationResult.failed(request.request_id, PROMPT_TOO_LONG)
        params = self._sampling_params(request.n or self.settings.sampling.n)
        async with self._slots:
            return await self._run(llm, request.request_id, prompt_ids, params)

    async def _run(
        self, llm: Any, request_id: str, prompt_ids: list[int], params: Any
    ) -> GenerationResult:
        api = self._vllm
        final: Any = None
        internal_id = f"{request_id}#{next(self._ids)}"  # unique even if a caller reuses ids
        try:
            async for output in llm.generate(api.token_prompt(prompt_ids), params, internal_id):
                final = output
        except api.EngineDeadError as exc:
            raise EngineDeadError(f"vLLM engine died: {exc}") from exc
        except api.VLLMClientError as exc:
            logger.warning("request %s rejected by vLLM: %s", request_id, exc)
            return GenerationResult.failed(request_id, BAD_REQUEST)
        except Exception as exc:
            if llm.errored:
                raise EngineDeadError(f"vLLM engine died: {exc}") from exc
            logger.warning("request %s failed in vLLM: %r", request_id, exc)
            return GenerationResult.failed(request_id, REQUEST_FAILED)
        if final is None or not final.finished:
            return GenerationResult.failed(request_id, REQUEST_FAILED)
        return _result(request_id, final)

    def _running(self) -> Any:
        if self._llm is None:
            raise RuntimeError("engine not started: call start() or use `async with`")
        if self._llm.errored:
            raise EngineDeadError("vLLM engine is no longer running")
        return self._llm

    def _engine_args(self, model_path: str) -> Any:
        s = self.settings
        local = is_s3(s.model) or Path(model_path).exists()
        kwargs: dict[str, Any] = {
            "model": model_path,
            "revision": None if local else s.revision,
            "tensor_parallel_size": s.tensor_parallel_size,
            "max_model_len": s.max_model_len,
            "gpu_memory_utilization": s.gpu_memory_utilization,
            "dtype": s.dtype,
            "enable_prefix_caching": s.enable_prefix_caching,
            "kv_cache_dtype": s.kv_cache_dtype,
        }
        if s.tokenizer is not None:
            kwargs["tokenizer"] = s.tokenizer
        if s.quantization is not None:
            kwargs["quantization"] = s.quantization
        if s.speculative is not None:
            kwargs["speculative_config"] = s.speculative.vllm_config()
        kwargs.update(s.engine_args)
        return self._vllm.AsyncEngineArgs(**kwargs)

    def _sampling_params(self, n: int) -> Any:
        s = self.settings.sampling
        return self._vllm.SamplingParams(
            n=n,
            temperature=s.temperature,
            top_p=s.top_p,
            max_tokens=s.max_tokens,
            seed=s.seed,
            # Only the finished request comes back: no per-token traffic to the caller.
            output_kind=self._vllm.RequestOutputKind.FINAL_ONLY,
        )

    def _apply_template(self, messages: Sequence[ChatMessage]) -> list[int]:
        try:
            encoded = self._tokenizer.apply_chat_template(
                [m.as_dict() for m in messages], tokenize=True, add_generation_prompt=True
            )
        except Exception as exc:  # jinja errors, raise_exception() in the template, ...
            raise _TemplateRejected(str(exc)) from exc
        return _as_token_ids(encoded)


def fold_system_into_user(messages: Sequence[ChatMessage]) -> tuple[ChatMessage, ...]:
    """The messages without system turns, their text put before the first user turn's."""
    system = "\n\n".join(m.content for m in messages if m.role == "system")
    rest = [m for m in messages if m.role != "system"]
    if not system:
        return tuple(rest)
    for i, message in enumerate(rest):
        if message.role == "user":
            rest[i] = ChatMessage("user", f"{system}\n\n{message.content}")
            return tuple(rest)
    return (ChatMessage("user", system), *rest)


def _result(request_id: str, final: Any) -> GenerationResult:
    outputs = sorted(final.outputs, key=lambda o: o.index)
    completions = tuple(
        Completion(
            text=o.text,
            finish_reason=str(o.finish_reason),
            generated_tokens=len(o.token_ids),
        )
        for o in outputs
    )
    return GenerationResult(request_id, len(final.prompt_token_ids), completions)


def _as_token_ids(encoded: Any) -> list[int]:
    # Tokenizers return a list of ids, or a mapping with input_ids, depending on version.
    if isinstance(encoded, list):
        return [int(t) for t in encoded]
    ids = encoded["input_ids"]
    if ids and isinstance(ids[0], list):
        ids = ids[0]
    return [int(t) for t in ids]


class _VllmApi:
    """The few vLLM names this engine uses, imported on first start."""

    def __init__(self) -> None:
        vllm = importlib.import_module("vllm")
        self.version: str = vllm.__version__
        self.AsyncEngineArgs: Any = vllm.AsyncEngineArgs
        self.SamplingParams: Any = vllm.SamplingParams
        # Token ids go in as an already-rendered engine input where this vLLM has that type
        # (no second pass through its renderer); older versions take a TokensPrompt.
        try:
            self.token_prompt: Callable[[list[int]], Any] = importlib.import_module(
                "vllm.inputs.engine"
            ).tokens_input
        except (ImportError, AttributeError):
            tokens_prompt = vllm.TokensPrompt
            self.token_prompt = lambda ids: tokens_prompt(prompt_token_ids=ids)
        self.RequestOutputKind: Any = importlib.import_module(
            "vllm.sampling_params"
        ).RequestOutputKind
        self.AsyncLLM: Any = importlib.import_module("vllm.v1.engine.async_llm").AsyncLLM
        self.EngineDeadError: Any = importlib.import_module(
            "vllm.v1.engine.exceptions"
        ).EngineDeadError
        self.VLLMClientError: Any = importlib.import_module("vllm.exceptions").VLLMClientError
        self.current_platform: Any = importlib.import_module("vllm.platforms").current_platform

    @classmethod
    def load(cls) -> _VllmApi:
        return cls()
