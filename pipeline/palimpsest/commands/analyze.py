"""`palimpsest analyze`: correlations and ability factors of a benchmark score table.

The command line for palimpsest.analysis. It stays light: numpy, matplotlib and the analysis
library are imported only when the command runs, because building the `palimpsest` parser
imports every command module.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _column_list(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _where(text: str) -> tuple[str, str]:
    column, sep, value = text.partition("=")
    if not sep or not column.strip():
        raise argparse.ArgumentTypeError(f"expected COLUMN=VALUE, got {text!r}")
    return column.strip(), value.strip()


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _params_tokens(text: str) -> list[str]:
    columns = _column_list(text)
    if len(columns) != 2:
        raise argparse.ArgumentTypeError(f"expected PARAMS,TOKENS, got {text!r}")
    return columns


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scores", type=Path, help="score table, CSV or JSONL; one row per model")
    parser.add_argument("--out", type=Path, required=True, help="directory for CSVs and plots")
    parser.add_argument(
        "--where",
        type=_where,
        action="append",
        default=[],
        metavar="COLUMN=VALUE",
        help="keep only rows whose COLUMN equals VALUE (repeatable; all must match)",
    )
    parser.add_argument(
        "--label-columns",
        type=_column_list,
        default=[],
        metavar="A,B,...",
        help="numeric columns that are not benchmarks (e.g. a parameter count)",
    )
    parser.add_argument(
        "--format",
        choices=("csv", "jsonl"),
        help="input format (default: from the suffix; .jsonl and .ndjson are JSONL)",
    )
    parser.add_argument(
        "--components",
        type=_positive,
        default=3,
        help="leading components to summarize, plot and fit (default 3)",
    )
    parser.add_argument(
        "--top",
        type=_positive,
        default=5,
        help="top-loading benchmarks named per component in the summary (default 5)",
    )
    compute = parser.add_mutually_exclusive_group()
    compute.add_argument(
        "--compute-column",
        metavar="COLUMN",
        help="training compute per model; fit component scores against its log10",
    )
    compute.add_argument(
        "--compute-from",
        type=_params_tokens,
        metavar="PARAMS,TOKENS",
        help="estimate compute as 6 x PARAMS x TOKENS from two columns, then fit as above",
    )


def run(args: argparse.Namespace) -> int:
    from palimpsest import analysis

    compute: list[str] = []
    if args.compute_column:
        compute = [args.compute_column]
    elif args.compute_from:
        compute = list(args.compute_from)
    try:
        result = analysis.analyze(
            args.scores,
            args.out,
            where=args.where,
            label_columns=args.label_columns,
            components=args.components,
            top=args.top,
            compute_columns=compute,
            fmt=args.format,
        )
    except analysis.ScoreTableError as exc:
        print(f"palimpsest analyze: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"palimpsest analyze: cannot write to {args.out}: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(result.summary)
    print(f"Wrote {len(result.files)} files to {args.out}")
    return 0
