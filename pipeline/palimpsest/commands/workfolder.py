"""What `palimpsest filter` and `palimpsest rewrite` share: a work folder for the job they
run, and where the rejects and the counts go."""

from __future__ import annotations

import argparse
import contextlib
import shutil
import tempfile
from collections.abc import Iterator


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
