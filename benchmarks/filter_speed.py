"""Filter speed and score parity: the published method against ours, on the same files, in one run.

The published method runs one `pylint` subprocess per sample (4 threads), parses the printed
rating and applies the comment penalty. Ours runs `CodeFilter` once with exact scores (every
sample linted to the end, to compare scores), then in rounds, each from a fresh pool of
workers:
- the default, with the exact early-stop shortcuts (to compare speed and decisions);
- a second pass through the same workers ("warm workers"): what a long shard sees once its
  workers hold astroid's trees of the stdlib; it must give the same outputs as the first;
- `palimpsest filter` as a whole process (start-up, reading, writing and all) on the first
  `--cli` samples, against the published method's time on those same samples.

A shared host's speed swings from one minute to the next (the CPU probe has read 10 ms and
24 ms within one run), and the published side takes minutes where ours takes seconds, so one
pass of ours would catch one moment's speed.
The rounds are spread around the published side's two timed parts (the `--cli` samples, then
the rest), a CPU probe is printed before each, and the ratios use the mean of the rounds.
Prints files/s of each, the ratios, the share of samples whose score or decision differs, and
whether the machine was quiet before and after.

    .venv/bin/python benchmarks/filter_speed.py [--limit N] [--workers N] [--cli N] [--rounds N]
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
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_probe, machine_state, print_machine
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
        finished = subprocess.run(
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
            capture_output=True,
            text=True,
        )
        seconds = time.monotonic() - started
        if finished.returncode != 0:
            raise SystemExit(f"palimpsest filter failed:\n{finished.stderr}")
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


@dataclass(frozen=True)
class Round:
    """One round of ours: the CPU probe before it, then seconds and outputs of each part."""

    probe_ms: float
    default: float
    warm: float
    cli: float
    outputs: list[dict[str, Any]]
    warm_outputs: list[dict[str, Any]]


def run_round(samples: list[str], workers: int, cli_n: int) -> Round:
    probe = cpu_probe()
    (first, warm), (t_first, t_warm) = run_ours(samples, workers, exact=False, passes=2)
    written, t_cli = run_cli(samples[:cli_n], workers) if cli_n else (0, 0.0)
    if written != cli_n:
        raise SystemExit(f"palimpsest filter wrote {written} records for {cli_n} samples")
    return Round(probe, t_first, t_warm, t_cli, first, warm)


def spread(rounds: int, parts: int) -> list[int]:
    """How many of `rounds` run before each of `parts` timed parts of the published side and
    after the last: as evenly as possible, the middle gaps first."""
    gaps = parts + 1
    counts = [rounds // gaps] * gaps
    order = sorted(range(gaps), key=lambda gap: abs(gap - parts / 2))
    for gap in order[: rounds % gaps]:
        counts[gap] += 1
    return counts


def kept(score: float | None, code: str) -> bool:
    return score is not None and syntax_problem(code) is None and score >= DEFAULT_MIN_SCORE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="use the first N samples")
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument(
        "--cli", type=int, default=128, help="samples for the whole-process run (0: none)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of ours (fresh pools)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    samples = load_samples(args.limit)
    n = len(samples)
    cli_n = min(args.cli, n)
    print(
        f"{n} samples, {args.workers} linter processes, "
        f"published method with {PUBLISHED_THREADS} threads, {args.rounds} rounds of ours"
    )
    before = machine_state()

    (exact,), (t_exact,) = run_ours(samples, args.workers, exact=True)
    # The published side runs the CLI's samples first, so their time is known on its own.
    parts = [part for part in (samples[:cli_n], samples[cli_n:]) if part]
    published: list[float | None] = []
    part_seconds: list[float] = []
    part_probes: list[float] = []
    rounds: list[Round] = []
    counts = spread(args.rounds, len(parts))
    for index, part in enumerate(parts):
        rounds += [run_round(samples, args.workers, cli_n) for _ in range(counts[index])]
        part_probes.append(cpu_probe())
        scores, seconds = run_published(part)
        published += scores
        part_seconds.append(seconds)
    rounds += [run_round(samples, args.workers, cli_n) for _ in range(counts[-1])]
    after = machine_state(after_run=True)
    t_pub = sum(part_seconds)
    t_head = part_seconds[0] if cli_n else 0.0

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
    first = rounds[0].outputs
    decision_fast = sum(
        1
        for code, ref, ours in zip(samples, published, first, strict=True)
        if kept(ref, code) != ("reject_reason" not in ours)
    )
    differs = sum(
        1
        for i in range(n)
        if any(r.outputs[i] != first[i] or r.warm_outputs[i] != first[i] for r in rounds)
    )

    print("published side:")
    labels = [f"first {cli_n} samples", "the rest"] if cli_n else ["all samples"]
    for label, seconds, probe in zip(labels, part_seconds, part_probes, strict=False):
        print(f"  {label:<26}{seconds:>10.1f} s  (CPU probe before: {probe} ms)")
    print(f"{'round':<7}{'probe ms':>9}{'default s':>11}{'warm s':>9}{'cli s':>8}")
    for number, r in enumerate(rounds, 1):
        print(f"{number:<7}{r.probe_ms:>9}{r.default:>11.2f}{r.warm:>9.2f}{r.cli:>8.2f}")
    t_fast = mean(r.default for r in rounds)
    t_warm = mean(r.warm for r in rounds)
    print(f"{'method':<28}{'seconds':>10}{'files/s':>10}{'ratio':>8}")
    for name, seconds in (
        ("published (subprocess x4)", t_pub),
        ("ours, exact scores (1 pass)", t_exact),
        ("ours, default (mean)", t_fast),
        ("ours, warm workers (mean)", t_warm),
    ):
        print(f"{name:<28}{seconds:>10.1f}{n / seconds:>10.2f}{t_pub / seconds:>8.1f}")
    ratios = ", ".join(f"{t_pub / r.default:.1f}" for r in rounds)
    print(f"default ratio per round: {ratios}")
    if cli_n:
        t_cli = mean(r.cli for r in rounds)
        print(f"whole process on the first {cli_n} samples (mean of the rounds):")
        for name, seconds in (("published (subprocess x4)", t_head), ("palimpsest filter", t_cli)):
            print(f"{name:<28}{seconds:>10.1f}{cli_n / seconds:>10.2f}{t_head / seconds:>8.1f}")
        print(f"CLI ratio per round: {', '.join(f'{t_head / r.cli:.1f}' for r in rounds)}")
    print(f"score differs by > 0.01:        {score_diff}/{n} ({100 * score_diff / n:.2f}%)")
    print(f"decision differs (exact):       {decision_exact}/{n} ({100 * decision_exact / n:.2f}%)")
    print(f"decision differs (early stop):  {decision_fast}/{n} ({100 * decision_fast / n:.2f}%)")
    print(f"output differs between passes:  {differs}/{n} ({100 * differs / n:.2f}%)")
    print_machine(before, after, 14)


if __name__ == "__main__":
    main()
