"""`palimpsest worker --job URI --stages S[,S...]`: what a Kubernetes Indexed Job pod runs.

The pod reads the job document (see `palimpsest.document`), which holds the whole job, its
plan and its prompts, and runs one group of the job's stages for its index: a CPU stage (e.g.
`filter`) over one shard, or consecutive LLM stages (e.g. `sgcr,scor`) over a block of
`--shards-per-index` shards on one loaded model, or one unit of one `--step` of a stage that
runs in steps (dedup: a shard, a column range or the one cluster unit; see
`palimpsest.dedupstage`). The index comes from `--index` or the Job's
JOB_COMPLETION_INDEX; `--shard-list` maps indexes to shards when a Job retries only some of
them; `--give-up` names where the operator marks indexes it gave up (exit 3 before any work).
Nothing else of the spec is passed as flags.

Exit codes: 0 when every shard of the index is committed (by this attempt or an earlier one);
3 for a configuration that can never work (an unreadable or foreign job document, tool
versions other than the pins, an index outside the plan or given up, a storage endpoint that ignores
conditional puts, a damaged input object such as a truncated .zst); other non-zero values
for failures worth a retry (a dead engine, storage errors), so the Job retries the index;
143 when stopped by SIGTERM (the pod deleted, evicted or preempted), its shard left
uncommitted for the next attempt.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from palimpsest.commands._common import add_s3_arguments, config_error, s3_settings
from palimpsest.names import INDEX_ENV

if TYPE_CHECKING:
    from palimpsest.document import JobDocument
    from palimpsest.plan import ShardPlan
    from palimpsest.rewrite.runner import RunnerSettings
    from palimpsest.stagerun import ShardResult
    from palimpsest.storage import Store

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--job", required=True, metavar="URI", help="the job document (local or s3://)"
    )
    parser.add_argument(
        "--stages",
        required=True,
        metavar="S[,S...]",
        help="the group of the job's stages this pod runs: one CPU stage, or consecutive "
        "LLM stages",
    )
    parser.add_argument(
        "--index", type=int, default=None, help=f"the pod's index (default: ${INDEX_ENV})"
    )
    parser.add_argument(
        "--shards-per-index",
        type=int,
        default=1,
        metavar="K",
        help="index i runs shards [i*K, (i+1)*K) of the plan (or of --shard-list)",
    )
    parser.add_argument(
        "--shard-list",
        default=None,
        metavar="URI",
        help="a JSON list of plan shards that the indexes count through instead of the whole "
        "plan (a Job that retries only some shards)",
    )
    parser.add_argument(
        "--give-up",
        default=None,
        metavar="URI",
        help="a folder where an `index-<i>` object means index i was given up: exit 3 at once",
    )
    parser.add_argument(
        "--step",
        default=None,
        metavar="STEP",
        help="the step of a stage that runs in steps (dedup: signatures, buckets, clusters, "
        "filter); its indexes count that step's units",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="processes of a CPU stage (default: spec.filter.workers, else one per CPU)",
    )
    parser.add_argument(
        "--checkpoint-records",
        type=int,
        default=256,
        help="LLM stages: records per stage between chunk checkpoints (default 256)",
    )
    parser.add_argument(
        "--checkpoint-seconds",
        type=float,
        default=300.0,
        help="LLM stages: most seconds between chunk checkpoints (default 300)",
    )
    add_s3_arguments(parser)


@dataclass(frozen=True)
class Assignment:
    """What this pod does: the job, its plan, the stage group and the shards of its index."""

    document: JobDocument
    plan: ShardPlan
    stages: tuple[str, ...]
    shards: tuple[int, ...]
    """Plan shards, or the units of `step`."""
    step: str | None = None


def shard_index(args: argparse.Namespace) -> int:
    if args.index is not None:
        return int(args.index)
    value = os.environ.get(INDEX_ENV)
    if value is None or not value.isdigit():
        raise ValueError(f"no shard index: pass --index or set {INDEX_ENV} (got {value!r})")
    return int(value)


def assignment(args: argparse.Namespace) -> Assignment:
    """Read and check everything the pod needs; ValueError says what cannot work."""
    from palimpsest.commit import check_conditional_put
    from palimpsest.document import read_document
    from palimpsest.identity import check_tools
    from palimpsest.names import give_up_key
    from palimpsest.plan import ShardPlan
    from palimpsest.stagerun import block_of
    from palimpsest.stages.registry import STAGES, groups
    from palimpsest.storage import is_s3, join, store_for

    document = read_document(store_for(args.job, s3_settings(args)), args.job)
    stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
    if stages not in set(groups(document.job.stages)):
        raise ValueError(
            f"--stages {','.join(stages)}: not a stage group of the job "
            f"({' | '.join(','.join(g) for g in groups(document.job.stages))})"
        )
    tools = tuple(dict.fromkeys(t for s in stages for t in STAGES[s].tools))
    if document.job.rewrite and document.job.engine.type == "openai":
        tools = tuple(t for t in tools if t != "vllm")
    problems = check_tools(tools)
    if problems:
        raise ValueError("this environment does not match the pinned tools: " + "; ".join(problems))
    store = job_store(document)
    if is_s3(document.job.output_uri):
        check_conditional_put(store, document.job.output_uri)
    plan = ShardPlan.from_json(store.read_bytes(document.plan_uri))
    if plan.plan_id != document.plan_id:
        raise ValueError(
            f"{document.plan_uri}: plan {plan.plan_id}, the job needs {document.plan_id}"
        )
    order: list[int] = list(range(units(document, plan, stages, args.step)))
    if args.shard_list:
        order = [int(s) for s in json.loads(store.read_bytes(args.shard_list))]
    index = shard_index(args)
    if args.give_up and store.exists(join(args.give_up, give_up_key(index))):
        raise ValueError(f"index {index}: given up by the operator (evicted too often)")
    picked = block_of(index, args.shards_per_index, len(order))
    return Assignment(document, plan, stages, tuple(order[i] for i in picked), args.step)


def units(document: JobDocument, plan: ShardPlan, stages: tuple[str, ...], step: str | None) -> int:
    """What the indexes count through: the plan's shards, or the units of a dedup step."""
    from palimpsest.dedupsteps import step_units
    from palimpsest.stages.registry import STAGES, Runner

    if STAGES[stages[0]].runner is not Runner.CORPUS:
        if step is not None:
            raise ValueError(f"--step: stage {stages[0]} does not run in steps")
        return len(plan.shards)
    if step is None:
        raise ValueError(f"--step: required by stage {stages[0]}")
    return step_units(step, len(plan.shards), document.job.dedup)


def runner_settings(args: argparse.Namespace) -> RunnerSettings:
    from palimpsest.rewrite.runner import RunnerSettings

    return RunnerSettings(
        checkpoint_records=args.checkpoint_records, checkpoint_seconds=args.checkpoint_seconds
    )


def job_store(document: JobDocument) -> Store:
    from palimpsest.storage import store_for

    return store_for(document.job.output_uri, document.job.storage.s3_settings())


def stop_on_sigterm() -> None:
    """Exit at once (143) on SIGTERM. In a container the worker is PID 1, and the kernel
    ignores a signal that PID 1 has no handler for: an evicted or preempted pod would run on
    until the grace period's SIGKILL, holding its node (and GPUs) for nothing. Nothing is
    lost: a shard is committed by its marker or not at all, and the pod's child processes
    (linters, the engine) end with its PID namespace."""
    signal.signal(signal.SIGTERM, lambda signum, _frame: os._exit(128 + signum))


def run(args: argparse.Namespace) -> int:
    from palimpsest.commit import ConditionalPutError
    from palimpsest.document import DocumentError

    stop_on_sigterm()
    try:
        work = assignment(args)
        runner_settings(args)
    except (DocumentError, ConditionalPutError, ValueError, IndexError) as exc:
        return config_error(exc)
    from palimpsest.records import CorruptObjectError
    from palimpsest.stages.registry import STAGES, Runner
    from palimpsest.storage import StorageError

    summary: dict[str, Any] | None
    try:
        runner = STAGES[work.stages[0]].runner
        if runner is Runner.RECORDS:
            summary = run_records(work, args.workers)
        elif runner is Runner.CORPUS:
            summary = run_steps(work)
        else:
            summary = run_llm(work, runner_settings(args))
    except CorruptObjectError as exc:
        return config_error(exc)  # the same bytes fail every retry
    except StorageError as exc:
        log.error("shards %s failed, to be retried: %s", list(work.shards), exc)
        return 1
    if summary is None:
        return 1
    print(json.dumps(summary), file=sys.stdout)
    return 0


def run_records(work: Assignment, workers: int | None) -> dict[str, Any]:
    from palimpsest.progress import progress_display
    from palimpsest.stagerun import run_records_shard
    from palimpsest.stages.registry import STAGES

    (kind,) = work.stages
    entry = STAGES[kind]
    assert entry.open is not None
    ref = work.document.ref(kind)
    results = {}
    with entry.open(work.document.job, workers) as stage:
        for shard in work.shards:
            open_display, close_display = progress_display(enabled=True)
            tick = open_display(kind, 0, work.plan.shards[shard].est_records)
            try:
                result = run_records_shard(
                    job_store(work.document), work.document, work.plan, ref, stage, shard, tick
                )
            finally:
                close_display()
            results[str(shard)] = result_summary(result)
    return {"stage": ref.stage_id, "shards": results}


def result_summary(result: ShardResult) -> dict[str, Any]:
    return {
        "committed": result.committed,
        "already_done": result.already_done,
        "stats": result.stats.to_dict(),
    }


def run_steps(work: Assignment) -> dict[str, Any] | None:
    """The index's units of one dedup step; None when the step before is not committed yet
    (the Job retries the index)."""
    from palimpsest.dedupstage import run_step
    from palimpsest.rewrite.runner import MissingInputError

    assert work.step is not None
    (kind,) = work.stages
    ref = work.document.ref(kind)
    store = job_store(work.document)
    results = {}
    try:
        for unit in work.shards:
            result = run_step(store, work.document, work.plan, ref, work.step, unit)
            results[str(unit)] = result_summary(result)
    except MissingInputError as exc:
        log.error("%s units %s failed, to be retried: %s", work.step, list(work.shards), exc)
        return None
    return {"stage": ref.stage_id, "step": work.step, "units": results}


def run_llm(work: Assignment, settings: RunnerSettings) -> dict[str, Any] | None:
    """The block's shards through the LLM stages; None when the attempt must be retried."""
    from palimpsest.engines import EngineDeadError
    from palimpsest.rewrite.runner import LostCommitError, MissingInputError
    from palimpsest.stagerun import run_llm_block_sync

    try:
        reports = run_llm_block_sync(
            job_store(work.document), work.document, work.plan, work.stages, work.shards, settings
        )
    except (EngineDeadError, LostCommitError, MissingInputError) as exc:
        log.error("shards %s failed, to be retried: %s", list(work.shards), exc)
        return None
    return {
        "shards": list(work.shards),
        "stages": {
            str(shard): {kind: r.__dict__ for kind, r in stages.items()}
            for shard, stages in reports.items()
        },
    }
