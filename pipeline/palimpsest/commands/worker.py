"""`palimpsest worker filter ...`: what a Kubernetes Indexed Job pod runs for one shard.

The shard index comes from `--index` or the Job's JOB_COMPLETION_INDEX. Exit codes: 0 when
the shard is committed (by this attempt or an earlier one); non-zero on any failure, so the
Job retries the index.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from palimpsest.commands._common import (
    EXIT_CONFIG_ERROR,
    add_field_arguments,
    add_filter_arguments,
    add_s3_arguments,
    filter_settings,
    s3_settings,
)

INDEX_ENV = "JOB_COMPLETION_INDEX"


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
