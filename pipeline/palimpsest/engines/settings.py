"""Engine settings, parsed once at the boundary.

`EngineSettings` is what a job spec's `engine:` section (or the CLI flags) becomes. It is a
frozen dataclass so that bad values fail here, with the setting's name, before any model is
loaded; `engines.factory.make_engine` then picks the implementation. Which of these settings
decide a stage's output (and so its id) is listed in `palimpsest.identity`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from palimpsest.engines.base import EngineSettingsError, SamplingSettings

ENGINE_TYPES: Final = ("vllm", "openai")

DEFAULT_MAX_IN_FLIGHT: Final[Mapping[str, int]] = {"vllm": 512, "openai": 64}
"""Requests in flight when `max_in_flight` is not set. vLLM: well above its batch size
(max_num_seqs, 256 by default) so its scheduler always has waiting work; a server: what one
`vllm serve` replica batches well without piling up timeouts."""

SPECULATIVE_METHODS: Final = ("ngram",)
"""Speculative decoding methods: `ngram` proposes the tokens that followed the last few
generated tokens where they occur in the prompt (prompt lookup); it needs no draft model and
suits rewrites, which copy much of their input."""


@dataclass(frozen=True)
class SpeculativeSettings:
    """(vllm) speculative decoding: cheap guesses of the next tokens that the model verifies
    in one step; accepted guesses save steps, rejected ones cost a little compute."""

    method: str = "ngram"
    """One of SPECULATIVE_METHODS."""
    num_speculative_tokens: int = 4
    """Tokens guessed per step; more pays when long runs are copied, costs when guesses fail."""
    prompt_lookup_max: int = 4
    """(ngram) longest n-gram of recent output looked up in the prompt."""
    prompt_lookup_min: int = 1
    """(ngram) shortest n-gram looked up; shorter matches guess more often, and worse."""

    def __post_init__(self) -> None:
        _check(
            self.method in SPECULATIVE_METHODS,
            "speculative.method",
            f"must be one of {SPECULATIVE_METHODS}, got {self.method!r}",
        )
        for name in ("num_speculative_tokens", "prompt_lookup_min"):
            _check(getattr(self, name) >= 1, f"speculative.{name}", "must be >= 1")
        _check(
            self.prompt_lookup_max >= self.prompt_lookup_min,
            "speculative.prompt_lookup_max",
            "must be >= promptLookupMin",
        )

    def vllm_config(self) -> dict[str, Any]:
        """The value of vLLM's `speculative_config` engine argument."""
        return {
            "method": self.method,
            "num_speculative_tokens": self.num_speculative_tokens,
            "prompt_lookup_max": self.prompt_lookup_max,
            "prompt_lookup_min": self.prompt_lookup_min,
        }


@dataclass(frozen=True)
class EngineSettings:
    """How to reach or load the model. Fields marked (vllm) or (openai) apply to that type."""

    type: str
    """'vllm' (in-process engine) or 'openai' (an OpenAI-compatible HTTP endpoint)."""
    model: str
    """(vllm) a model name, a local directory, or `s3://bucket/prefix` (downloaded once per
    machine into `model_cache_dir`); (openai) the model name the server serves."""
    revision: str | None = None
    """The model's revision (e.g. a commit hash or a release tag). It only labels results:
    it goes into the stage id, so pin it for reproducible outputs. None means unpinned."""
    tokenizer: str | None = None
    """(vllm) the tokenizer to load when it is not the model's own (a name or a folder)."""
    quantization: str | None = None
    """(vllm) the weight quantization method (e.g. 'fp8', 'awq'); None: the model's own."""
    kv_cache_dtype: str = "auto"
    """(vllm) the KV cache's dtype ('auto' follows the model; 'fp8' halves its memory)."""
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    """Sampling parameters; the defaults are the published ones."""
    max_in_flight: int | None = None
    """Most requests in flight at once; None takes DEFAULT_MAX_IN_FLIGHT for the type."""

    tensor_parallel_size: int = 1
    """(vllm) GPUs one model instance is split over. Published: 4 (70B model, H100s)."""
    max_model_len: int | None = None
    """(vllm) context length in tokens; None takes the model's own. The prompt budget is this
    minus `sampling.max_tokens`."""
    gpu_memory_utilization: float = 0.9
    """(vllm) share of each GPU's memory vLLM may use, in (0, 1]. Published: 0.9."""
    dtype: str = "auto"
    """(vllm) weight and activation dtype ('auto', 'bfloat16', 'float16', 'float32').
    Published: bf16."""
    enable_prefix_caching: bool = True
    """(vllm) reuse the KV cache of shared prompt prefixes (the system prompt); it costs
    under 1% when nothing is shared."""
    model_cache_dir: str | None = None
    """(vllm) where `s3://` models are downloaded; None means $PALIMPSEST_MODEL_CACHE or
    ~/.cache/palimpsest/models."""
    engine_args: Mapping[str, Any] = field(default_factory=dict)
    """(vllm) further keyword arguments for vLLM's AsyncEngineArgs (e.g. max_num_seqs,
    enforce_eager), passed as they are."""
    speculative: SpeculativeSettings | None = None
    """(vllm) speculative decoding; None decodes one token per step."""

    base_url: str | None = None
    """(openai) the API root, up to and including `/v1`, e.g. http://rewrite-llm:8000/v1."""
    api_key_env: str = "OPENAI_API_KEY"
    """(openai) environment variable holding the API key; the key may be absent (no auth)."""
    request_timeout: float = 600.0
    """(openai) seconds one attempt of one request may take, answer included; a long
    generation at max_tokens 8192 must fit in it."""
    connect_timeout: float = 10.0
    """(openai) seconds to open a connection."""
    max_attempts: int = 6
    """(openai) attempts per request on 429, 5xx, timeouts and connection errors."""
    backoff_initial: float = 1.0
    """(openai) seconds of the first retry delay; each next one doubles, with jitter."""
    backoff_max: float = 60.0
    """(openai) longest retry delay in seconds."""
    max_consecutive_failures: int = 32
    """(openai) requests in a row that may fail after all their retries before the endpoint
    is declared dead (the worker exits rather than reject every record)."""

    def __post_init__(self) -> None:
        _check(
            self.type in ENGINE_TYPES, "type", f"must be one of {ENGINE_TYPES}, got {self.type!r}"
        )
        _check(bool(self.model), "model", "must not be empty")
        if self.max_in_flight is not None:
            _check(self.max_in_flight >= 1, "max_in_flight", "must be >= 1")
        _check(self.tensor_parallel_size >= 1, "tensor_parallel_size", "must be >= 1")
        if self.max_model_len is not None:
            _check(self.max_model_len >= 2, "max_model_len", "must be >= 2")
        _check(0 < self.gpu_memory_utilization <= 1, "gpu_memory_utilization", "must be in (0, 1]")
        _check(
            "speculative_config" not in self.engine_args,
            "engine_args",
            "set speculative decoding with `speculative`, not speculative_config",
        )
        _check(
            self.speculative is None or self.type == "vllm",
            "speculative",
            "applies to the vllm engine only (a server decodes as it was started)",
        )
        if self.type == "openai":
            _check(bool(self.base_url), "base_url", "is required for the openai engine")
            _check(self.request_timeout > 0, "request_timeout", "must be > 0")
            _check(self.connect_timeout > 0, "connect_timeout", "must be > 0")
            _check(self.max_attempts >= 1, "max_attempts", "must be >= 1")
            _check(self.backoff_initial >= 0, "backoff_initial", "must be >= 0")
            _check(
                self.backoff_max >= self.backoff_initial,
                "backoff_max",
                "must be >= backoff_initial",
            )
            _check(self.max_consecutive_failures >= 1, "max_consecutive_failures", "must be >= 1")

    @property
    def in_flight(self) -> int:
        """`max_in_flight`, or the type's default."""
        return self.max_in_flight or DEFAULT_MAX_IN_FLIGHT[self.type]


def _check(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise EngineSettingsError(f"{name}: {message}")
