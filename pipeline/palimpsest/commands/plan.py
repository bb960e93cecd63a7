"""`palimpsest plan INPUT_URI`: write a deterministic shard plan for an input listing."""

from __future__ import annotations

import argparse
import json
import sys

from palimpsest.commands._common import add_s3_arguments, s3_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="INPUT_URI", help="a file or prefix, local or s3://")
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--records-per-shard",
        type=int,
        default=None,
        help="target records per shard (default 10000)",
    )
    size.add_argument(
        "--bytes-per-shard", type=int, default=None, help="target input bytes per shard"
    )
    parser.add_argument(
        "--out",
        default=None,
        metavar="PLAN_URI",
        help="where to write the plan (default: print it to stdout)",
    )
    add_s3_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from palimpsest.plan import PlanSettings, make_plan
    from palimpsest.storage import store_for

    if args.bytes_per_shard is not None:
        settings = PlanSettings(records_per_shard=None, bytes_per_shard=args.bytes_per_shard)
    else:
        settings = PlanSettings(records_per_shard=args.records_per_shard or 10_000)
    store = store_for(args.input, s3_settings(args))
    plan = make_plan(store, args.input, settings)
    body = plan.to_json()
    if args.out is None:
        sys.stdout.write(body.decode("utf-8") + "\n")
        return 0
    store_for(args.out, s3_settings(args)).put_bytes(args.out, body)
    summary = {
        "plan_id": plan.plan_id,
        "shards": len(plan.shards),
        "est_records": plan.est_records,
        "skipped": list(plan.skipped),
        "plan": args.out,
    }
    print(json.dumps(summary))
    return 0
