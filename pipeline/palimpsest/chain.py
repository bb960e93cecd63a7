"""Which stages a job runs, in order, and the id of each.

Both the operator (to name Jobs and find markers) and the workers (to name their output
folders) compute stage ids here, from the same inputs, so they always agree. A stage's id
chains its predecessor's id, so a change upstream re-runs everything downstream, while a
change to one stage (say the SCOR prompt) re-runs only that stage and the ones after it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from palimpsest.engines.settings import EngineSettings
from palimpsest.filtering import FilterSettings
from palimpsest.identity import REWRITE_TOOLS, pinned_tools, stage_id
from palimpsest.prompts import Prompt
from palimpsest.shardrun import filter_stage_id

RECIPES: Final[Mapping[str, tuple[str, ...]]] = {
    "swallowcode": ("filter", "sgcr", "scor"),
    "swallowmath": ("math",),
    "instruct": ("translate", "response"),
}
"""Each recipe's full stage list; a job may run a subset (e.g. no translation)."""

STAGE_PROMPTS: Final[Mapping[str, str]] = {
    "sgcr": "code-sgcr",
    "scor": "code-scor",
    "math": "math-rewrite",
    "translate": "instruct-translate",
    "response": "instruct-response",
}
"""The prompt file each LLM stage uses."""

REWRITE_STAGES: Final = frozenset(STAGE_PROMPTS)


@dataclass(frozen=True)
class StageRef:
    """One stage of a job: its kind, its id (also its output folder name) and its input."""

    kind: str
    stage_id: str
    previous: str | None

    def uri(self, output_uri: str) -> str:
        return f"{output_uri.rstrip('/')}/{self.stage_id}"


def check_stages(recipe: str, stages: tuple[str, ...]) -> None:
    """Raise, naming the field, when `stages` is not an ordered subset of the recipe's."""
    if recipe not in RECIPES:
        raise ValueError(f"recipe: unknown recipe {recipe!r} (known: {', '.join(RECIPES)})")
    allowed = RECIPES[recipe]
    unknown = [s for s in stages if s not in allowed]
    if unknown:
        raise ValueError(
            f"stages: {unknown} not in recipe {recipe!r} (its stages: {list(allowed)})"
        )
    if list(stages) != [s for s in allowed if s in stages]:
        raise ValueError(f"stages: {list(stages)} out of order (recipe order: {list(allowed)})")
    if not stages:
        raise ValueError("stages: at least one stage is needed")


def rewrite_identity(
    kind: str, engine: EngineSettings, prompt: Prompt, text_field: str, extra: Mapping[str, Any]
) -> dict[str, Any]:
    """What decides a rewrite stage's outputs (not how fast it runs)."""
    return {
        "stage": kind,
        "prompt_sha256": prompt.sha256,
        "engine": engine.type,
        "model": engine.model,
        "revision": engine.revision,
        "dtype": engine.dtype,
        "max_model_len": engine.max_model_len,
        "sampling": engine.sampling.as_dict(),
        "text_field": text_field,
        **extra,
    }


def job_stages(
    plan_id: str,
    recipe: str,
    stages: tuple[str, ...],
    filter_settings: FilterSettings | None,
    engine: EngineSettings | None,
    prompts: Mapping[str, Prompt],
    text_field: str = "text",
    stage_extra: Mapping[str, Mapping[str, Any]] | None = None,
    first_previous: str | None = None,
) -> tuple[StageRef, ...]:
    """The job's stages in order, each with its id.

    `prompts` maps a stage kind to its loaded prompt; `stage_extra` adds settings that decide
    one stage's output (e.g. {"translate": {"language": "Japanese"}}). `first_previous` is the
    id of the stage whose outputs feed the first of `stages` when that stage ran earlier or
    elsewhere (e.g. the filter, when a worker runs only the rewrite stages); None means the
    first stage reads the plan's raw shards.
    """
    check_stages(recipe, stages)
    refs: list[StageRef] = []
    previous: str | None = first_previous
    for kind in stages:
        if kind == "filter":
            if filter_settings is None:
                raise ValueError("filter: settings are required when the filter stage runs")
            sid = filter_stage_id(plan_id, filter_settings)
        else:
            if engine is None:
                raise ValueError(f"rewrite.engine: required for stage {kind!r}")
            if kind not in prompts:
                raise ValueError(f"rewrite.prompts: no prompt loaded for stage {kind!r}")
            settings = rewrite_identity(
                kind, engine, prompts[kind], text_field, (stage_extra or {}).get(kind, {})
            )
            sid = stage_id(kind, plan_id, settings, previous, pinned_tools(REWRITE_TOOLS))
        refs.append(StageRef(kind, sid, previous))
        previous = sid
    return tuple(refs)
