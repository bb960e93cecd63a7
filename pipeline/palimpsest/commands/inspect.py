"""`palimpsest inspect OUTPUT_URI`: read a few records of a stage, before and after, in a terminal.

A run is judged by reading what it did. This prints records of one stage (by default the
last), or its rejects (`--rejects`, `--reason R`), each with the record as the stage read it
and a diff, plus the stage's metadata (tokens, the model's score, the pylint score); `--id ID`
follows one record through every stage. Colour and syntax highlighting (rich) only on a
terminal; plain text otherwise, so the output can be piped or saved.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from typing import TYPE_CHECKING, Any

from palimpsest.commands._common import add_s3_arguments, s3_settings, user_error

if TYPE_CHECKING:
    from palimpsest.inspection import Sample


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", metavar="OUTPUT_URI", help="a job's output folder or s3:// URI")
    parser.add_argument("--stage", default=None, help="the stage to show (default: the last)")
    parser.add_argument("--rejects", action="store_true", help="show the stage's rejects")
    parser.add_argument("--reason", default=None, help="only rejects with this reason")
    parser.add_argument("-n", type=int, default=3, metavar="N", help="records to show (default 3)")
    parser.add_argument(
        "--id",
        default=None,
        metavar="ID",
        help="follow the record with this id through every stage",
    )
    add_s3_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from palimpsest.inspection import InspectError, follow, open_job, samples
    from palimpsest.localrun import resolve_uri
    from palimpsest.storage import store_for

    output = resolve_uri(args.output)
    store = store_for(output, s3_settings(args))
    try:
        view = open_job(store, output)
        if args.id is not None:
            found = follow(store, view, args.id)
        else:
            stage = args.stage or view.refs[-1].kind
            found = samples(
                store, view, stage, rejects=args.rejects, reason=args.reason, limit=args.n
            )
    except InspectError as exc:
        return user_error(exc)
    if not found:
        what = (
            f"rejects ({args.reason})" if args.reason else "rejects" if args.rejects else "records"
        )
        print(f"no committed {what} in stage {args.stage or view.refs[-1].kind}", file=sys.stderr)
        return 0
    blocks = [sample_text(s, view.text_field) for s in found]
    if sys.stdout.isatty():
        print_rich(blocks, CODE_RECIPES.get(view.document.job.recipe, "text"))
    else:
        print("\n\n".join("\n".join(line for _, line in block) for block in blocks))
    return 0


Line = tuple[str, str]
"""(style, text): the style names what the line is (header, before, after, -, +, @)."""


def sample_text(sample: Sample, text_field: str) -> list[Line]:
    """The lines showing one sample: a header, the text before and after, and their diff."""
    after = str(sample.after.get(text_field, ""))
    before = str(sample.before.get(text_field, "")) if sample.before is not None else None
    lines: list[Line] = [("header", header(sample))]
    if before is None or before == after:
        lines.append(("header", "--- text (unchanged by this stage)"))
        lines += [("text", line) for line in after.splitlines()]
        return lines
    lines.append(("header", "--- before"))
    lines += [("text", line) for line in before.splitlines()]
    lines.append(("header", "+++ after"))
    lines += [("text", line) for line in after.splitlines()]
    lines.append(("header", "diff"))
    diff = difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=1)
    for line in list(diff)[2:]:
        lines.append((line[:1] if line[:1] in "+-@" else "text", line))
    return lines


def header(sample: Sample) -> str:
    from palimpsest.lint.scoring import score_text
    from palimpsest.recordfields import DETAIL_FIELD, META_FIELD, SCORE_FIELD, SCORE_MAX_FIELD

    record = sample.after
    parts = [f"== {sample.stage}", f"shard {sample.shard}", f"key {sample.key}"]
    if sample.rejected:
        detail = record.get(DETAIL_FIELD)
        parts.append(f"rejected: {sample.reason}" + (f" ({detail})" if detail else ""))
    else:
        parts.append("kept")
    for field, label in ((SCORE_FIELD, "pylint"), (SCORE_MAX_FIELD, "pylint at most")):
        if record.get(field) is not None:
            parts.append(f"{label} {score_text(record[field])}")
    meta = record.get(META_FIELD)
    stage_meta: Any = meta.get(sample.stage) if isinstance(meta, dict) else None
    if isinstance(stage_meta, dict):
        shown = {k: v for k, v in stage_meta.items() if k not in HIDDEN_META and v is not None}
        parts.append(json.dumps(shown, sort_keys=True))
    return " | ".join(parts)


HIDDEN_META = frozenset({"original", "prompt_sha256"})
"""Stage metadata left out of the header: the text before (shown as such) and a hash."""

STYLES = {"header": "bold cyan", "-": "red", "+": "green", "@": "magenta", "text": ""}
CODE_RECIPES = {"swallowcode": "python"}
"""Recipes whose texts are code, and the language their records are highlighted as."""


def print_rich(blocks: list[list[Line]], language: str) -> None:
    """The blocks in colour; the texts before and after highlighted as `language`."""
    from itertools import groupby

    from rich.console import Console
    from rich.syntax import Syntax
    from rich.text import Text

    console = Console()
    for block in blocks:
        for style, group in groupby(block, key=lambda line: line[0]):
            lines = [text for _, text in group]
            if style == "text":
                console.print(Syntax("\n".join(lines), language, theme="ansi_dark"))
            else:
                for line in lines:
                    console.print(Text(line, style=STYLES.get(style, "")), soft_wrap=True)
        console.print()
