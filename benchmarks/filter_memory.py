"""Peak memory of a filter worker over one large shard (50,000 samples by default).

Builds a shard of real code (the top-level functions and classes of the bundled sample corpus,
each one sample, cycled to the requested count), runs `palimpsest filter` on it in a child
process, and samples the resident memory of that process and its linter processes every
half second. Prints the peak of the whole tree and of the largest single process, and the
samples per second.

    .venv/bin/python benchmarks/filter_memory.py [--samples 50000] [--workers 2]
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "data" / "python-sample.jsonl.gz"


def snippets() -> list[str]:
    """Top-level blocks (def/class with their bodies) of the sample corpus."""
    blocks: list[str] = []
    with gzip.open(SAMPLE, "rt", encoding="utf-8") as handle:
        for line in handle:
            current: list[str] = []
            for row in json.loads(line)["text"].splitlines(keepends=True):
                if row.startswith(("def ", "class ")) and current:
                    blocks.append("".join(current))
                    current = []
                if current or row.startswith(("def ", "class ")):
                    current.append(row)
            if current:
                blocks.append("".join(current))
    return [b for b in blocks if len(b) > 80]


def write_shard(path: Path, count: int) -> None:
    pool = snippets()
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(count):
            handle.write(json.dumps({"id": i, "text": pool[i % len(pool)]}) + "\n")


def tree_rss(proc: psutil.Process) -> tuple[int, int]:
    total = largest = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            rss = p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
        total += rss
        largest = max(largest, rss)
    return total, largest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        shard = Path(tmp) / "shard.jsonl"
        write_shard(shard, args.samples)
        cmd = [
            sys.executable,
            "-m",
            "palimpsest.cli",
            "filter",
            str(shard),
            f"{tmp}/kept.jsonl.zst",
            "--workers",
            str(args.workers),
            "--no-progress",
            "--stats",
            f"{tmp}/stats.json",
        ]
        started = time.monotonic()
        child = subprocess.Popen(cmd)
        proc = psutil.Process(child.pid)
        peak_total = peak_single = 0
        while child.poll() is None:
            total, largest = tree_rss(proc)
            peak_total, peak_single = max(peak_total, total), max(peak_single, largest)
            time.sleep(0.5)
        seconds = time.monotonic() - started
        stats = json.loads(Path(f"{tmp}/stats.json").read_text())
    mib = 1024 * 1024
    print(f"samples {args.samples}, linter processes {args.workers}, exit code {child.returncode}")
    print(f"records in {stats['records']['in']}, kept {stats['records']['kept']}")
    print(f"peak RSS, whole tree:        {peak_total / mib:8.0f} MiB")
    print(f"peak RSS, largest process:   {peak_single / mib:8.0f} MiB")
    print(f"seconds {seconds:.0f}, samples/s {args.samples / seconds:.1f}")


if __name__ == "__main__":
    main()
