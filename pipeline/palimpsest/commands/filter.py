"""`palimpsest filter IN OUT`: run the syntax and pylint filters over local or S3 files.

It builds the same job a RewriteJob with `stages: [filter]` would be, runs it with the local
runner into a work folder (kept with --work-dir, so an interrupted run skips what it
committed), then writes the kept records to OUT and the rejects (with `reject_reason`) to REJ.
"""

from __future__ import annotations

import argparse
import json
import sys

from palimpsest.commands._common import (
    add_field_arguments,
    add_filter_arguments,
    add_s3_arguments,
    filter_settings,
    input_spec,
    storage_spec,
    user_error,
)
from palimpsest.commands.workfolder import add_work_arguments, default_rejects_uri, work_folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "input",
        metavar="IN",
        help="input file or prefix (.jsonl[.gz|.zst], .parquet; local or s3://)",
    )
    parser.add_argument("output", metavar="OUT", help="kept records (format from the name)")
    add_work_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_field_arguments(parser)
    add_filter_arguments(parser)
    add_s3_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from palimpsest.job import Job
    from palimpsest.localrun import LocalOptions, LocalRunError, export, prepare, run_job
    from palimpsest.plan import PlanSettings
    from palimpsest.progress import progress_display

    progress, close_bars = progress_display(enabled=not args.no_progress)
    with work_folder(args) as work:
        try:
            job = Job(
                name="filter",
                recipe="swallowcode",
                stages=("filter",),
                input=input_spec(args),
                output_uri=work,
                storage=storage_spec(args),
                sharding=PlanSettings(records_per_shard=None, bytes_per_shard=1 << 62),
                filter=filter_settings(args),
            )
            local = prepare(job, LocalOptions())
            run_job(local, LocalOptions(workers=args.workers), progress)
        except (LocalRunError, ValueError) as exc:
            return user_error(exc)
        finally:
            close_bars()
        summary = export(
            local, ("filter",), args.output, args.rejects or default_rejects_uri(args.output)
        )
    stats = summary["stages"]["filter"]
    if args.stats:
        from palimpsest.storage import store_for

        store_for(args.stats).put_bytes(args.stats, json.dumps(stats, indent=1).encode("utf-8"))
    line = {
        "kept": stats["records"]["kept"],
        "rejected": stats["records"]["rejected"],
        "rejects": stats["rejects"],
        "seconds": stats["seconds"],
    }
    print(json.dumps(line), file=sys.stderr)
    return 0
