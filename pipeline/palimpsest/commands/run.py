"""`palimpsest run JOB.yaml`: a whole RewriteJob on this machine, without Kubernetes.

It runs the spec's stages with the cluster's plan, stage ids, markers and commit protocol
(see `palimpsest.localrun`), so a re-run skips what is committed; shows each stage's progress
(`palimpsest.progress`: bars on a terminal, JSON lines in logs); and ends with a summary of
every stage and a report (`report.html`, `summary.json`) written next to the outputs (see
`palimpsest.report`). Relative local paths in the job file are taken relative to the current
working directory.

Exit codes: 0 when every stage run is committed; 3 for a job that cannot run as written (bad
spec or flags, missing tools, a model that cannot be loaded); 4-7 for a missing input, access
denied, an unreachable S3 endpoint, a model folder without config.json (see
`palimpsest.usererrors`); 1 for other failures (a dead engine, storage errors), after which a
re-run resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from palimpsest.commands._common import user_error

if TYPE_CHECKING:
    from palimpsest.localrun import LocalJob, LocalOptions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", metavar="JOB.yaml", help="a RewriteJob manifest")
    parser.add_argument(
        "--model",
        default=None,
        metavar="PATH_OR_NAME",
        help="replace spec.rewrite.engine.model, e.g. with a local model folder",
    )
    parser.add_argument(
        "--output", default=None, metavar="URI", help="replace spec.output.uri (local or s3://)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="linter processes of the filter stage (default: spec.filter.workers, else one "
        "per core)",
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="N",
        help="run over the input's first N records only (a separate plan and separate stage "
        "ids: a limited run never passes for a full one)",
    )
    parser.add_argument(
        "--stages",
        default=None,
        help="comma-separated subset of the job's stages to run now (default: all); the "
        "others are read from their markers",
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress (bars on a terminal, else a JSON line per stage every 30 s)",
    )
    parser.add_argument(
        "--no-report",
        action="store_true",
        help="neither print the summary nor write the report (e.g. when running a subset of "
        "the stages)",
    )


def options_from(args: argparse.Namespace) -> LocalOptions:
    from palimpsest.localrun import LocalOptions

    stages = None
    if args.stages:
        stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
    return LocalOptions(
        model=args.model,
        output=args.output,
        workers=args.workers,
        limit=args.limit,
        stages=stages,
    )


def run(args: argparse.Namespace) -> int:
    from palimpsest.engines.base import EngineDeadError
    from palimpsest.localrun import LocalRunError, load_job, prepare, run_job
    from palimpsest.progress import progress_display
    from palimpsest.storage import StorageError

    options = options_from(args)
    started = time.monotonic()
    try:
        local = prepare(load_job(Path(args.job), options), options)
    except (LocalRunError, ValueError, StorageError) as exc:
        return user_error(exc)
    if local.job.dry_run:
        print(
            f"planned {len(local.plan.shards)} shards (~{local.plan.est_records} records) of "
            f"{local.job.input.uri}; stages {', '.join(r.stage_id for r in local.refs)}; "
            "nothing run (spec.dryRun)"
        )
        return 0
    progress, close_bars = progress_display(enabled=not args.no_progress)
    try:
        run_job(local, options, progress)
    except (LocalRunError, ValueError, StorageError) as exc:
        return user_error(exc)
    except EngineDeadError as exc:
        print(f"error: the engine died: {exc}; a re-run resumes", file=sys.stderr)
        return 1
    finally:
        close_bars()
    if not args.no_report:
        report(local, time.monotonic() - started)
    return 0


def report(local: LocalJob, seconds: float) -> None:
    """Print the summary; write report.html, summary.json and the dataset card (README.md)
    under the output URI."""
    from palimpsest.card import write_card
    from palimpsest.inspection import JobView
    from palimpsest.report import (
        REPORT_NAME,
        SUMMARY_NAME,
        collect,
        render_html,
        summary_json,
        summary_text,
    )
    from palimpsest.storage import join

    job = local.job
    data = collect(
        local.store,
        job.output_uri,
        local.refs,
        len(local.plan.shards),
        job_name=job.name,
        recipe=job.recipe,
        min_score=job.filter.min_score if "filter" in job.stages else None,
        view=JobView(local.document, local.plan, job.output_uri),
    )
    report_uri = join(job.output_uri, REPORT_NAME)
    summary: dict[str, Any] = {**summary_json(data), "plan_id": local.plan.plan_id}
    local.store.put_bytes(
        join(job.output_uri, SUMMARY_NAME), json.dumps(summary, indent=1).encode()
    )
    local.store.put_bytes(report_uri, render_html(data).encode("utf-8"))
    card_uri = write_card(local.store, local.document, len(local.plan.shards), data)
    print(summary_text(data))
    print(f"  report: {report_uri} (this invocation: {seconds:.1f} s)")
    print(f"  dataset card: {card_uri}")
