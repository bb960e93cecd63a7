"""`palimpsest decontaminate IN OUT`: drop records that contain or nearly match benchmark items.

It builds the job a RewriteJob with `stages: [decontam]` would be and runs it like
`palimpsest filter` does: kept records to OUT, rejects (`contaminated`, with the benchmark and
task id under `contamination`) to REJ.
"""

from __future__ import annotations

import argparse

from palimpsest.commands._common import (
    add_s3_arguments,
    config_error,
)
from palimpsest.commands.workfolder import add_records_command_arguments, run_records_command
from palimpsest.stages.decontam import HUMANEVAL, DecontamSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = DecontamSettings()
    add_records_command_arguments(parser)
    group = parser.add_argument_group("decontam")
    group.add_argument(
        "--benchmarks",
        default=HUMANEVAL,
        help=f"comma-separated: {HUMANEVAL} (bundled) and/or URIs of JSONL/Parquet benchmark "
        f"files (default {HUMANEVAL})",
    )
    group.add_argument(
        "--benchmark-fields",
        default=",".join(defaults.text_fields),
        help="fields of a benchmark file's items holding texts to match "
        f"(default {','.join(defaults.text_fields)})",
    )
    group.add_argument(
        "--benchmark-id-field",
        default=defaults.id_field,
        help=f"field of a benchmark file's items naming the task (default {defaults.id_field})",
    )
    group.add_argument(
        "--min-match-tokens",
        type=int,
        default=defaults.min_match_tokens,
        help="exact check: shortest shared run of tokens that matches "
        f"(default {defaults.min_match_tokens})",
    )
    group.add_argument(
        "--threshold",
        type=float,
        default=defaults.threshold,
        help="near check: Jaccard similarity of 5-token shingle sets that matches "
        f"(default {defaults.threshold})",
    )
    add_s3_arguments(parser)


def settings(args: argparse.Namespace) -> DecontamSettings:
    from palimpsest.localrun import resolve_uri

    benchmarks = [b.strip() for b in args.benchmarks.split(",") if b.strip()]
    return DecontamSettings(
        benchmarks=tuple(b if b == HUMANEVAL else resolve_uri(b) for b in benchmarks),
        text_fields=tuple(f.strip() for f in args.benchmark_fields.split(",") if f.strip()),
        id_field=args.benchmark_id_field,
        min_match_tokens=args.min_match_tokens,
        threshold=args.threshold,
    )


def run(args: argparse.Namespace) -> int:
    try:
        decontam = settings(args)
    except ValueError as exc:
        return config_error(exc)
    return run_records_command(args, "decontam", decontam=decontam)
