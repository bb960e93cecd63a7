"""A rewrite run put together: a recipe's stages with their ids, their input, and an engine.

The worker (`palimpsest worker rewrite`) and the local command (`palimpsest rewrite`) both
build a `RewriteSpec` from their flags and call `run_block`; stage ids come from
`palimpsest.chain.job_stages`, the one place the operator computes them too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from palimpsest.chain import STAGE_PROMPTS, job_stages
from palimpsest.commit import read_committed, read_marker
from palimpsest.engines.settings import EngineSettings, make_engine
from palimpsest.plan import ShardPlan
from palimpsest.prompts import load_stage_prompt
from palimpsest.records import Fields, RawRecord
from palimpsest.rewrite.runner import (
    InputFn,
    MissingInputError,
    RewriteRunner,
    RunnerSettings,
    StagePlan,
    StageReport,
)
from palimpsest.rewrite.stages import RewriteStage
from palimpsest.storage import Store, join

DEFAULT_FIELDS: Final = Fields()

DEFAULT_STAGES: Final[Mapping[str, tuple[str, ...]]] = {
    "swallowcode": ("sgcr", "scor"),
    "swallowmath": ("math",),
    "instruct": ("response",),
}
"""The LLM stages a recipe runs when none are named (the instruct translation is opt-in)."""


@dataclass(frozen=True)
class RewriteSpec:
    """What decides a rewrite run's stages, parsed once from flags or a job spec."""

    recipe: str
    stages: tuple[str, ...]
    engine: EngineSettings
    fields: Fields = DEFAULT_FIELDS
    prompts_dir: Path | None = None
    """Directory of prompt files replacing the built-in ones (None: built-in or
    $PALIMPSEST_PROMPTS_DIR)."""
    language: str | None = None
    """Target language of the translate stage."""
    input_stage: str | None = None
    """Id of the stage whose committed outputs are the input; None reads the plan's shards."""

    def __post_init__(self) -> None:
        if "translate" in self.stages and not self.language:
            raise ValueError("language: required when the translate stage runs")


def parse_stages(recipe: str, stages: str | None) -> tuple[str, ...]:
    """`--stages sgcr,scor` as a tuple; the recipe's default LLM stages when not given."""
    if recipe not in DEFAULT_STAGES:
        raise ValueError(f"recipe: unknown recipe {recipe!r} (known: {', '.join(DEFAULT_STAGES)})")
    if not stages:
        return DEFAULT_STAGES[recipe]
    names = tuple(s.strip() for s in stages.split(",") if s.strip())
    unknown = [s for s in names if s not in STAGE_PROMPTS]
    if unknown:
        raise ValueError(f"stages: {unknown} are not rewrite stages ({', '.join(STAGE_PROMPTS)})")
    return names


def stage_plans(spec: RewriteSpec, plan_id: str) -> list[StagePlan]:
    """The stages to run, in order, each with its id from `job_stages`."""
    prompts = {
        kind: load_stage_prompt(STAGE_PROMPTS[kind], spec.prompts_dir) for kind in spec.stages
    }
    extra: dict[str, dict[str, Any]] = {}
    if "translate" in spec.stages:
        extra["translate"] = {"language": spec.language}
    refs = job_stages(
        plan_id,
        spec.recipe,
        spec.stages,
        None,
        spec.engine,
        prompts,
        spec.fields.text,
        extra,
        first_previous=spec.input_stage,
    )
    return [
        StagePlan(ref, RewriteStage(ref.kind, prompts[ref.kind], spec.fields, spec.language))
        for ref in refs
    ]


def shard_inputs(
    store: Store, plan: ShardPlan, output_uri: str, input_stage: str | None
) -> InputFn:
    """The first stage's records of a shard: the plan's raw shard, or the committed outputs
    of `input_stage` read through its marker."""

    def raw(index: int) -> Iterable[RawRecord]:
        return plan.shards[index].read(store)

    def committed(index: int) -> Iterable[RawRecord]:
        assert input_stage is not None
        marker = read_marker(store, join(output_uri, input_stage), index)
        if marker is None:
            raise MissingInputError(f"shard {index}: input stage {input_stage} has no marker")
        return read_committed(store, marker)

    return raw if input_stage is None else committed


def block_of(index: int, shards_per_index: int, total: int) -> range:
    """Plan shards [index*K, min((index+1)*K, total)) that index `index` handles."""
    if shards_per_index < 1:
        raise ValueError(f"shards-per-index: must be >= 1, got {shards_per_index}")
    start = index * shards_per_index
    if index < 0 or start >= total:
        raise ValueError(
            f"index {index} x {shards_per_index} shards is outside the plan's {total} shards"
        )
    return range(start, min(start + shards_per_index, total))


async def run_block(
    spec: RewriteSpec,
    store: Store,
    plan: ShardPlan,
    output_uri: str,
    shards: Sequence[int],
    settings: RunnerSettings | None = None,
) -> dict[int, dict[str, StageReport]]:
    """Start the engine once and rewrite the shards; raises EngineDeadError if it dies.

    When every stage of every shard is committed already, the engine is not even started."""
    plans = stage_plans(spec, plan.plan_id)
    done = committed_reports(store, plans, output_uri, shards)
    if len(done) == len(shards):
        return done
    inputs = shard_inputs(store, plan, output_uri, spec.input_stage)
    engine = make_engine(spec.engine)
    # Built before the engine starts, so the model load is charged to the first commit.
    runner = RewriteRunner(engine, store, output_uri, plans, inputs, spec.fields.id, settings)
    async with engine:
        return await runner.run(shards)


def committed_reports(
    store: Store, plans: Sequence[StagePlan], output_uri: str, shards: Sequence[int]
) -> dict[int, dict[str, StageReport]]:
    """Reports of the shards whose every stage is committed (the others are left out)."""
    reports: dict[int, dict[str, StageReport]] = {}
    for shard in shards:
        markers = [read_marker(store, p.ref.uri(output_uri), shard) for p in plans]
        if all(m is not None for m in markers):
            reports[shard] = {
                p.ref.kind: StageReport(p.ref.stage_id, False, True, m.stats.to_dict())
                for p, m in zip(plans, markers, strict=True)
                if m is not None
            }
    return reports


def run_block_sync(
    spec: RewriteSpec,
    store: Store,
    plan: ShardPlan,
    output_uri: str,
    shards: Sequence[int],
    settings: RunnerSettings | None = None,
) -> dict[int, dict[str, StageReport]]:
    return asyncio.run(run_block(spec, store, plan, output_uri, shards, settings))
