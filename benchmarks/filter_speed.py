"""Filter speed and score parity: the published method against ours, on the same files, in one run.

The published method runs one `pylint` subprocess per sample (4 threads), parses the printed
rating and applies the comment penalty. Ours runs `CodeFilter` with exact scores (every sample
linted to the end, to compare scores), then with the exact early-stop shortcuts (the default,
to compare speed and decisions) twice through the same workers: the second pass ("warm
workers") is what a long shard sees once its workers hold astroid's trees of the stdlib, and
must give the same outputs as the first. Then `palimpsest filter` runs as a whole process
(start-up, reading, writing and all) on the first `--cli` samples, against the published
method's time on those same samples. Prints files/s of each, the ratios, the share of samples
whose score or decision differs, and whether the machine was quiet before and after.

    .venv/bin/python benchmarks/filter_speed.py [--limit N] [--workers N] [--cli N]
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine_state, print_machine
from palimpsest.lint.pool import LintPool, default_workers
from palimpsest.lint.reference import published_score
from palimpsest.lint.scoring import DEFAULT_MIN_SCORE
from palimpsest.records import Fields, RawRecord
from palimpsest.stages.filter import CodeFilter, FilterSettings, syntax_problem
from palimpsest.stats import Stats

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "data" / "python-sample.jsonl.gz"
PUBLISHED_THREADS = 4

EDGE_CASES = [
    "# only a comment\n",
    "x = 1  # a\n# b\n# c\n# d\n",
    "import os\nimport sys\n",
    '"""Docstring only."""\n',
    "def f(:\n    pass\n",
    "print('a')\n" * 50,
    "from random import *\nprint(randint(1, 2))\n",
    "def f():\n    return undefined_name\n",
    "class A:\n    def m(self):\n        return self.missing\n",
]


def load_samples(limit: int | None) -> list[str]:
    with gzip.open(SAMPLE, "rt", encoding="utf-8") as handle:
        texts = [json.loads(line)["text"] for line in handle]
    texts.extend(EDGE_CASES)
    return texts[:limit] if limit else texts


def run_published(samples: list[str]) -> tuple[list[float | None], float]:
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(PUBLISHED_THREADS) as pool:
        workdir = Path(tmp)
        scores = list(pool.map(lambda code: published_score(code, workdir), samples))
    return scores, time.monotonic() - started


def run_cli(samples: list[str], workers: int) -> tuple[int, float]:
    """`palimpsest filter` on `samples` as its own process; (records written, seconds)."""
    command = Path(sys.executable).with_name("palimpsest")
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "in.jsonl"
        with source.open("w", encoding="utf-8") as handle:
            for i, code in enumerate(samples):
                handle.write(json.dumps({"id": i, "text": code}) + "\n")
        kept_path, rejects_path = Path(tmp) / "kept.jsonl", Path(tmp) / "rejects.jsonl"
        started = time.monotonic()
        subprocess.run(
            [
                str(command),
                "filter",
                str(source),
                str(kept_path),
                "--rejects",
                str(rejects_path),
                "--workers",
                str(workers),
                "--no-progress",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        seconds = time.monotonic() - started
        written = sum(1 for path in (kept_path, rejects_path) for _ in path.open())
    return written, seconds


def run_ours(
    samples: list[str], workers: int, exact: bool, passes: int = 1
) -> tuple[list[list[dict[str, Any]]], list[float]]:
    """`CodeFilter` over `samples` `passes` times through one pool: each pass's outputs and
    seconds, the first pass's including the pool's start."""
    settings = FilterSettings(exact_scores=exact)
    items = [RawRecord("bench", i, {"id": i, "text": code}) for i, code in enumerate(samples)]
    outputs: list[list[dict[str, Any]]] = []
    seconds: list[float] = []
    started = time.monotonic()
    with LintPool(workers, settings.time_limit, memory_limit=settings.memory_limit) as pool:
        code_filter = CodeFilter(settings, pool, Fields(), workers)
        for _ in range(passes):
            results: list[dict[str, Any]] = []
            code_filter.run(items, results.append, results.append, Stats())
            outputs.append(sorted(results, key=lambda r: r["id"]))
            seconds.append(time.monotonic() - started)
            started = time.monotonic()
    return outputs, seconds


def kept(score: float | None, code: str) -> bool:
    return score is not None and syntax_problem(code) is None and score >= DEFAULT_MIN_SCORE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="use the first N samples")
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument(
        "--cli", type=int, default=128, help="samples for the whole-process run (0: none)"
    )
    args = parser.parse_args()
    samples = load_samples(args.limit)
    n = len(samples)
    cli_n = min(args.cli, n)
    print(
        f"{n} samples, {args.workers} linter processes, "
        f"published method with {PUBLISHED_THREADS} threads"
    )
    before = machine_state()

    # The published side runs the CLI's samples first, so their time is known on its own.
    head, t_head = run_published(samples[:cli_n])
    tail, t_tail = run_published(samples[cli_n:])
    published, t_pub = head + tail, t_head + t_tail
    (exact,), (t_exact,) = run_ours(samples, args.workers, exact=True)
    (fast, warm), (t_fast, t_warm) = run_ours(samples, args.workers, exact=False, passes=2)
    cli_written, t_cli = run_cli(samples[:cli_n], args.workers) if cli_n else (0, 0.0)
    after = machine_state(after_run=True)

    score_diff = sum(
        1
        for code, ref, ours in zip(samples, published, exact, strict=True)
        if (ref is None) != ("pylint_score" not in ours)
        or (
            ref is not None
            and syntax_problem(code) is None
            and abs(ref - ours["pylint_score"]) > 0.01
        )
    )
    decision_exact = sum(
        1
        for code, ref, ours in zip(samples, published, exact, strict=True)
        if kept(ref, code) != ("reject_reason" not in ours)
    )
    decision_fast = sum(
        1
        for code, ref, ours in zip(samples, published, fast, strict=True)
        if kept(ref, code) != ("reject_reason" not in ours)
    )
    warm_differs = sum(1 for first, second in zip(fast, warm, strict=True) if first != second)

    print(f"{'method':<28}{'seconds':>10}{'files/s':>10}{'ratio':>8}")
    for name, seconds in (
        ("published (subprocess x4)", t_pub),
        ("ours, exact scores", t_exact),
        ("ours, default (early stop)", t_fast),
        ("ours, warm workers", t_warm),
    ):
        print(f"{name:<28}{seconds:>10.1f}{n / seconds:>10.2f}{t_pub / seconds:>8.1f}")
    if cli_n:
        print(f"whole process on the first {cli_n} samples ({cli_written} records written):")
        for name, seconds in (("published (subprocess x4)", t_head), ("palimpsest filter", t_cli)):
            print(f"{name:<28}{seconds:>10.1f}{cli_n / seconds:>10.2f}{t_head / seconds:>8.1f}")
    print(f"score differs by > 0.01:        {score_diff}/{n} ({100 * score_diff / n:.2f}%)")
    print(f"decision differs (exact):       {decision_exact}/{n} ({100 * decision_exact / n:.2f}%)")
    print(f"decision differs (early stop):  {decision_fast}/{n} ({100 * decision_fast / n:.2f}%)")
    print(f"output differs (warm pass):     {warm_differs}/{n} ({100 * warm_differs / n:.2f}%)")
    print_machine(before, after, 14)


if __name__ == "__main__":
    main()
