"""`palimpsest filter IN OUT`: run the syntax and pylint filters over local or S3 files.

It builds the same job a RewriteJob with `stages: [filter]` would be, runs it with the local
runner into a work folder (kept with --work-dir, so an interrupted run skips what it
committed), then writes the kept records to OUT and the rejects (with `reject_reason`) to REJ.
"""

from __future__ import annotations

import argparse

from palimpsest.commands._common import (
    add_filter_arguments,
    add_s3_arguments,
    config_error,
    filter_settings,
)
from palimpsest.commands.workfolder import add_records_command_arguments, run_records_command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_records_command_arguments(parser)
    add_filter_arguments(parser)
    add_s3_arguments(parser)


def run(args: argparse.Namespace) -> int:
    try:
        settings = filter_settings(args)
    except ValueError as exc:
        return config_error(exc)
    return run_records_command(args, "filter", args.workers, filter=settings)
