"""`palimpsest filter IN OUT`: run the syntax and pylint filters over local or S3 files."""

from __future__ import annotations

import argparse
import json
import sys

from palimpsest.commands._common import (
    add_field_arguments,
    add_filter_arguments,
    add_s3_arguments,
    filter_settings,
    s3_settings,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "input",
        metavar="IN",
        help="input file or prefix (.jsonl[.gz|.zst], .parquet; local or s3://)",
    )
    parser.add_argument("output", metavar="OUT", help="kept records (format from the name)")
    parser.add_argument(
        "--rejects",
        metavar="REJ",
        default=None,
        help="rejected records with reject_reason (default: NAME.rejects.EXT beside OUT)",
    )
    parser.add_argument("--stats", metavar="STATS.json", default=None, help="write the counts here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_field_arguments(parser)
    add_filter_arguments(parser)
    add_s3_arguments(parser)


def default_rejects_uri(output: str) -> str:
    head, sep, tail = output.rpartition("/")
    name = tail.split(".", 1)
    rejects = f"{name[0]}.rejects.{name[1]}" if len(name) == 2 else f"{tail}.rejects.jsonl"
    return f"{head}{sep}{rejects}"


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from palimpsest.filtering import CodeFilter
    from palimpsest.lint.pool import LintPool
    from palimpsest.plan import PlanSettings, make_plan
    from palimpsest.records import RecordWriter
    from palimpsest.stats import Stats
    from palimpsest.storage import store_for

    settings = filter_settings(args)
    s3 = s3_settings(args)
    store = store_for(args.input, s3)
    plan = make_plan(
        store, args.input, PlanSettings(records_per_shard=None, bytes_per_shard=1 << 62)
    )
    kept = RecordWriter(store_for(args.output, s3), args.output)
    rejects_uri = args.rejects or default_rejects_uri(args.output)
    rejected = RecordWriter(store_for(rejects_uri, s3), rejects_uri)
    stats = Stats()
    bar = tqdm(
        total=plan.est_records, unit="rec", disable=args.no_progress, file=sys.stderr, desc="filter"
    )
    with LintPool(settings.workers, settings.time_limit) as pool:
        flt = CodeFilter(settings, pool)
        for shard in plan.shards:
            flt.run(shard.read(store), kept.write, rejected.write, stats, progress=bar.update)
    bar.close()
    kept.close()
    rejected.close()
    summary = stats.to_dict()
    if args.stats:
        store_for(args.stats, s3).put_bytes(
            args.stats, json.dumps(summary, indent=1).encode("utf-8")
        )
    print(
        json.dumps(
            {
                "kept": stats.kept,
                "rejected": stats.rejected,
                "rejects": summary["rejects"],
                "seconds": summary["seconds"],
            }
        ),
        file=sys.stderr,
    )
    return 0
