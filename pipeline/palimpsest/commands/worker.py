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
    flt.add_argument("--plan", required=True, metavar="PLAN_URI", help="the shard plan (local or s3://)")
    flt.add_argument("--output", required=True, metavar="URI",
                     help="job output root; the stage writes under URI/<stage-id>/")
    flt.add_argument("--index", type=int, default=None,
                     help=f"shard index (default: ${INDEX_ENV})")
    add_field_arguments(flt)
    add_filter_arguments(flt)
    add_s3_arguments(flt)


def shard_index(args: argparse.Namespace) -> int:
    if args.index is not None:
        return int(args.index)
    value = os.environ.get(INDEX_ENV)
    if value is None:
        raise SystemExit(f"no shard index: pass --index or set {INDEX_ENV}")
    return int(value)


def run(args: argparse.Namespace) -> int:
    from palimpsest.filtering import FilterSettings
    from palimpsest.lint.pool import LintPool
    from palimpsest.plan import ShardPlan
    from palimpsest.shardrun import run_filter_shard
    from palimpsest.storage import store_for

    s3 = s3_settings(args)
    plan = ShardPlan.from_json(store_for(args.plan, s3).read_bytes(args.plan))
    settings = filter_settings(args)
    assert isinstance(settings, FilterSettings)
    index = shard_index(args)
    with LintPool(settings.workers, settings.time_limit) as pool:
        result = run_filter_shard(store_for(args.output, s3), plan, index, args.output, settings, pool)
    print(json.dumps({"shard": index, "committed": result.committed, "already_done": result.already_done,
                      "stats": result.stats.to_dict()}), file=sys.stdout)
    return 0
