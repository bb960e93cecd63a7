"""The `palimpsest` command line: one subcommand per module, imported only when used.

Each command module exposes `add_arguments(parser)` and `run(args) -> int`, so that a
command's heavy imports (pylint, vLLM, matplotlib) load only when that command runs.
Expected failures a command does not handle itself end as one line and an exit code of their
own (see `palimpsest.usererrors`), never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from palimpsest.usererrors import explain

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "plan": ("palimpsest.commands.plan", "cut an input listing into a deterministic shard plan"),
    "filter": ("palimpsest.commands.filter", "syntax-check and pylint-score Python records"),
    "worker": ("palimpsest.commands.worker", "run one shard (or block of shards) of a stage"),
    "rewrite": (
        "palimpsest.commands.rewrite",
        "rewrite records with an LLM (SGCR/SCOR, math, instruct)",
    ),
    "analyze": (
        "palimpsest.commands.analyze",
        "correlations and ability factors of a benchmark table",
    ),
    "run": ("palimpsest.commands.run", "run a RewriteJob on this machine, without Kubernetes"),
    "decontaminate": (
        "palimpsest.commands.decontaminate",
        "drop records containing or nearly matching benchmark items (HumanEval, files)",
    ),
    "dedup": (
        "palimpsest.commands.dedup",
        "drop exact and near-duplicate records across the whole input (MinHash LSH)",
    ),
    "gc": ("palimpsest.commands.gc", "find (and delete) parts no committed marker lists"),
    "inspect": (
        "palimpsest.commands.inspect",
        "show records of a stage before/after with a diff, or follow one id",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="palimpsest", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        module = importlib.import_module(module_name)
        module.add_arguments(command_parser)
        command_parser.set_defaults(_module=module_name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:  # botocore's INFO lines (where it found credentials) are noise here
        logging.getLogger("botocore").setLevel(logging.WARNING)
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args))
    except Exception as exc:
        explained = explain(exc)
        if explained is None:
            raise
        print(explained.line(), file=sys.stderr)
        return explained.code


if __name__ == "__main__":
    sys.exit(main())
