"""Run a job's stages over shards, under the commit protocol: what workers and local runs share.

A worker pod (`palimpsest worker`) and `palimpsest run` both start from a job document and
call these functions, so a stage behaves the same on a laptop and on a cluster:
- `run_records_shard` runs one CPU stage (e.g. the filter) over one shard: a committed shard
  is skipped at once; otherwise the shard's records stream through the stage into this
  attempt's parts, and the attempt commits by creating the shard's marker. Anything that goes
  wrong before the commit leaves no marker, so nothing of the attempt counts.
- `run_llm_block` runs consecutive LLM stages over a block of shards on one engine, loaded
  once, each stage of each shard committing on its own (see `rewrite.runner`).
A stage reads the plan's raw shard when it is the job's first, else the committed outputs of
the stage before it, through that stage's marker.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from palimpsest.cardstats import describer
from palimpsest.commit import (
    OUTPUT_FORMATS,
    PART_FORMAT,
    Describe,
    ShardOutput,
    read_committed,
    read_marker,
)
from palimpsest.document import JobDocument
from palimpsest.engines.base import Engine
from palimpsest.engines.factory import make_engine
from palimpsest.identity import StageRef
from palimpsest.plan import ShardPlan
from palimpsest.recordkeys import assign_keys
from palimpsest.records import RawRecord
from palimpsest.rewrite.runner import (
    InputFn,
    MissingInputError,
    RewriteRunner,
    RunnerSettings,
    StagePlan,
    StageReport,
)
from palimpsest.stages.llm import RewriteStage
from palimpsest.stages.registry import STAGES, RecordStage, Runner
from palimpsest.stats import Stats
from palimpsest.storage import Store, join

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardResult:
    shard: int
    committed: bool
    """This attempt's marker is the shard's marker."""
    already_done: bool
    """The shard was committed before this attempt started (or by another attempt)."""
    stats: Stats


def shard_inputs(
    store: Store, plan: ShardPlan, output_uri: str, previous: str | None, id_field: str
) -> InputFn:
    """A shard's input records: the plan's raw shard (each record given its stable key, see
    `recordkeys`), or the committed outputs of the stage `previous` read through its marker."""

    def raw(index: int) -> Iterable[RawRecord]:
        return assign_keys(plan.shards[index].read(store), id_field)

    def committed(index: int) -> Iterable[RawRecord]:
        assert previous is not None
        marker = read_marker(store, join(output_uri, previous), index)
        if marker is None:
            raise MissingInputError(f"shard {index}: input stage {previous} has no marker")
        return read_committed(store, marker)

    return raw if previous is None else committed


def run_records_shard(
    store: Store,
    document: JobDocument,
    plan: ShardPlan,
    ref: StageRef,
    stage: RecordStage,
    index: int,
    progress: Callable[[int], None] | None = None,
) -> ShardResult:
    """Run the CPU stage `ref` over shard `index`; `progress` gets 1 per finished record."""
    if not 0 <= index < len(plan.shards):
        raise IndexError(f"shard index {index} outside the plan's 0..{len(plan.shards) - 1}")
    output_uri = document.job.output_uri
    stage_uri = ref.uri(output_uri)
    existing = read_marker(store, stage_uri, index)
    if existing is not None:
        log.info("shard %d of %s already committed by %s", index, ref.stage_id, existing.attempt)
        return ShardResult(index, False, True, existing.stats)
    items = shard_inputs(store, plan, output_uri, ref.previous, document.job.input.id_field)(index)
    out = ShardOutput(
        store, stage_uri, ref.stage_id, index, output_format=output_format(document, ref)
    )
    stats = Stats()
    try:
        stage.run(items, out.write, out.write_reject, stats, progress)
    except BaseException:
        out.abort()
        raise
    if not out.commit(stats, describe=final_describer(store, document, ref)):
        log.warning("shard %d of %s was committed by another attempt", index, ref.stage_id)
        winner = read_marker(store, stage_uri, index)
        return ShardResult(index, False, True, winner.stats if winner else stats)
    return ShardResult(index, True, False, stats)


def output_format(document: JobDocument, ref: StageRef) -> str:
    """The suffix of `ref`'s output parts: `spec.output.format` for the job's final stage."""
    if ref != document.stage_refs()[-1]:
        return PART_FORMAT
    return OUTPUT_FORMATS[document.job.output_format]


def final_describer(store: Store, document: JobDocument, ref: StageRef) -> Describe | None:
    """The card statistics the commit of `ref` carries: only the job's final stage has them."""
    if ref != document.stage_refs()[-1]:
        return None
    return describer(store, document.job)


def llm_plans(
    document: JobDocument, kinds: Sequence[str], store: Store | None = None
) -> list[StagePlan]:
    """The LLM stages `kinds` of the job, in order, each with its id and its prompt (and, with
    the `store` they commit to, the final stage's card statistics)."""
    job = document.job
    plans = []
    for kind in kinds:
        entry = STAGES[kind]
        if entry.runner is not Runner.LLM:
            raise ValueError(f"stage {kind!r} is not an LLM stage")
        stage = RewriteStage(
            entry,
            document.prompts[kind],
            job.input.fields,
            entry.values(job),
            entry.min_score_of(job),
        )
        ref = document.ref(kind)
        describe = None if store is None else final_describer(store, document, ref)
        plans.append(StagePlan(ref, stage, describe, output_format(document, ref)))
    return plans


def block_of(index: int, shards_per_index: int, total: int) -> range:
    """Plan shards [index*K, min((index+1)*K, total)) that index `index` handles."""
    if shards_per_index < 1:
        raise ValueError(f"--shards-per-index: must be >= 1, got {shards_per_index}")
    start = index * shards_per_index
    if index < 0 or start >= total:
        raise ValueError(
            f"index {index} x {shards_per_index} shards is outside the plan's {total} shards"
        )
    return range(start, min(start + shards_per_index, total))


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


async def run_llm_block(
    store: Store,
    document: JobDocument,
    plan: ShardPlan,
    kinds: Sequence[str],
    shards: Sequence[int],
    settings: RunnerSettings | None = None,
    engine: Engine | None = None,
) -> dict[int, dict[str, StageReport]]:
    """Start the engine once and run the LLM stages `kinds` over the shards; raises
    EngineDeadError if it dies. When every stage of every shard is committed already, the
    engine is not even started. `engine` replaces the one the job's settings would build."""
    output_uri = document.job.output_uri
    plans = llm_plans(document, kinds, store)
    done = committed_reports(store, plans, output_uri, shards)
    if len(done) == len(shards):
        return done
    inputs = shard_inputs(
        store, plan, output_uri, plans[0].ref.previous, document.job.input.id_field
    )
    engine = engine or make_engine(document.job.engine)
    # Built before the engine starts, so the model load is charged to the first commit.
    runner = RewriteRunner(
        engine, store, output_uri, plans, inputs, document.job.input.id_field, settings
    )
    async with engine:
        return await runner.run(shards)


def run_llm_block_sync(
    store: Store,
    document: JobDocument,
    plan: ShardPlan,
    kinds: Sequence[str],
    shards: Sequence[int],
    settings: RunnerSettings | None = None,
) -> dict[int, dict[str, StageReport]]:
    return asyncio.run(run_llm_block(store, document, plan, kinds, shards, settings))
