"""What `palimpsest filter`, `decontaminate` and `rewrite` share: a work folder for the job they
run, and where the rejects and the counts go."""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
from collections.abc import Iterator
from typing import Any


def add_work_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rejects",
        metavar="REJ",
        default=None,
        help="rejected records with reject_reason "
        "(default: OUT with .rejects before the extension)",
    )
    parser.add_argument(
        "--stats", metavar="STATS.json", default=None, help="write per-stage counts here"
    )
    parser.add_argument(
        "--work-dir",
        default=None,
        help="keep stage outputs and markers here, so a re-run skips what is committed "
        "(default: a temporary folder, removed at the end)",
    )


def add_records_command_arguments(parser: argparse.ArgumentParser) -> None:
    """IN, OUT, the work folder, progress and record fields: the arguments of every
    `run_records_command` command."""
    from palimpsest.commands._common import add_field_arguments

    parser.add_argument(
        "input",
        metavar="IN",
        help="input file or prefix (.jsonl[.gz|.zst], .parquet; local or s3://)",
    )
    parser.add_argument("output", metavar="OUT", help="kept records (format from the name)")
    add_work_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_field_arguments(parser)


def default_rejects_uri(output: str) -> str:
    """`out/kept.jsonl.zst` -> `out/kept.rejects.jsonl.zst`."""
    head, sep, tail = output.rpartition("/")
    name = tail.split(".", 1)
    rejects = f"{name[0]}.rejects.{name[1]}" if len(name) == 2 else f"{tail}.rejects.jsonl"
    return f"{head}{sep}{rejects}"


@contextlib.contextmanager
def work_folder(args: argparse.Namespace) -> Iterator[str]:
    """--work-dir (kept), or a temporary folder removed on exit."""
    if args.work_dir:
        from palimpsest.localrun import resolve_uri

        yield resolve_uri(args.work_dir)
        return
    work = tempfile.mkdtemp(prefix="palimpsest-work-")
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_records_command(
    args: argparse.Namespace, stage: str, workers: int | None = None, **settings: Any
) -> int:
    """Run the one-CPU-stage job a RewriteJob with `stages: [stage]` and these `settings`
    (Job fields, e.g. filter=...) would be, over args.input into a work folder, as one shard;
    export its kept records to args.output and rejects to args.rejects, and print its counts
    (to args.stats too): what `palimpsest filter` and `palimpsest decontaminate` do."""
    from palimpsest.commands._common import input_spec, storage_spec, user_error
    from palimpsest.job import Job
    from palimpsest.localrun import LocalOptions, LocalRunError, export, prepare, run_job
    from palimpsest.plan import PlanSettings
    from palimpsest.progress import progress_display
    from palimpsest.records import CorruptObjectError

    progress, close_bars = progress_display(enabled=not args.no_progress)
    with work_folder(args) as work:
        try:
            job = Job(
                name=stage,
                recipe="swallowcode",
                stages=(stage,),
                input=input_spec(args),
                output_uri=work,
                storage=storage_spec(args),
                sharding=PlanSettings(records_per_shard=None, bytes_per_shard=1 << 62),
                **settings,
            )
            local = prepare(job, LocalOptions())
            run_job(local, LocalOptions(workers=workers), progress)
        except (LocalRunError, ValueError, CorruptObjectError) as exc:
            return user_error(exc)
        finally:
            close_bars()
        rejects = args.rejects or default_rejects_uri(args.output)
        summary = export(local, job.stages, args.output, rejects)
    stats = summary["stages"][job.stages[-1]]
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
