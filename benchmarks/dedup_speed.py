"""Throughput, memory and accuracy of corpus-scale dedup on synthetic records.

Generates `--records` JSONL records (seeded) into a temporary folder: 70% unique texts of
`--words` tokens drawn uniformly from a 50,000-word vocabulary, 10% exact copies of one of
them with the spaces doubled, 20% near copies with 1 token replaced (Jaccard of 5-token
shingle sets ~0.92). Runs the four steps one after the other in this process, as `palimpsest
dedup` does, and prints per step the seconds, the CPU seconds, the peak RSS so far
(resource.getrusage) and the sizes a cluster pod of that step holds; then records/s per core
(records / CPU seconds of the steps), the planted copies found and the unique texts rejected.

    .venv/bin/python benchmarks/dedup_speed.py [--records 1000000] [--records-per-shard 100000]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from palimpsest.dedup import (
    DUPLICATE,
    ShardSignatures,
    bucket_edges,
    filter_shard,
    find_clusters,
    order_lookup,
    shard_signatures,
)
from palimpsest.dedupsteps import COLUMNS, DedupSettings
from palimpsest.plan import PlanSettings, make_plan
from palimpsest.records import Fields
from palimpsest.storage import LocalStore

T = TypeVar("T")
VOCABULARY = 50_000


def generate(path: Path, count: int, words: int, seed: int = 14) -> None:
    """Ids `r<n>` in order; the copies of a text come after it (so it is their kept one)."""
    rng = random.Random(seed)
    vocabulary = [f"w{i}" for i in range(VOCABULARY)]
    originals: list[list[str]] = []
    with path.open("w") as out:
        for n in range(count):
            kind = rng.random() if originals else 0.0
            if kind < 0.7:
                text = rng.choices(vocabulary, k=words)
                originals.append(text)
                line = " ".join(text)
            else:
                source = rng.choice(originals)
                line = "  ".join(source) if kind < 0.8 else " ".join(edited(source, rng))
            out.write(json.dumps({"id": f"r{n:07d}", "text": line, "kind": kind_name(kind)}))
            out.write("\n")


def edited(words: list[str], rng: random.Random) -> list[str]:
    """One token replaced: Jaccard (t - 9) / (t + 1) ~ 0.92 for t = 120 tokens."""
    copy = list(words)
    copy[rng.randrange(len(copy))] = f"x{rng.getrandbits(30)}"
    return copy


def kind_name(kind: float) -> str:
    return "unique" if kind < 0.7 else "exact" if kind < 0.8 else "near"


def measured(name: str, step: Callable[[], T], sizes: Callable[[T], str] | None = None) -> T:
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    result = step()
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    line = (
        f"{name:<11} {time.perf_counter() - started:8.1f} s  {cpu:8.1f} CPU s  "
        f"peak RSS {after.ru_maxrss / 1024:7.0f} MB"
    )
    print(line + (f"  ({sizes(result)})" if sizes else ""), flush=True)
    CPU.append(cpu)
    return result


CPU: list[float] = []
SIGNATURE_BYTES: list[int] = []


def signature_bytes(signatures: ShardSignatures) -> int:
    """What a shard's signatures take in memory: its arrays and its sort keys."""
    arrays = signatures.minhash.nbytes + signatures.exact.nbytes + 2 * len(signatures.order)
    return arrays + sum(sys.getsizeof(key) + 8 for key in signatures.order)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--words", type=int, default=120, help="tokens per unique text")
    parser.add_argument("--records-per-shard", type=int, default=100_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dedup-speed-"))
    try:
        run(work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, args: argparse.Namespace) -> None:
    source = work / "in.jsonl"
    started = time.perf_counter()
    # In a child process, so that the peak RSS measured here is the dedup's only.
    child = multiprocessing.get_context("spawn").Process(
        target=generate, args=(source, args.records, args.words)
    )
    child.start()
    child.join()
    if child.exitcode != 0:
        raise SystemExit(f"generating the records failed (exit {child.exitcode})")
    size = source.stat().st_size
    print(
        f"generated {args.records:,} records ({size / 1e6:.0f} MB) "
        f"in {time.perf_counter() - started:.0f} s",
        flush=True,
    )
    store, fields = LocalStore(), Fields()
    settings = DedupSettings(records_per_shard=args.records_per_shard)
    plan = make_plan(store, str(source), PlanSettings(records_per_shard=args.records_per_shard))
    shard_records = max(s.est_records for s in plan.shards)
    signatures = measured(
        "signatures",
        lambda: [shard_signatures(s.index, s.read(store), fields) for s in plan.shards],
        lambda sigs: f"{len(sigs)} shards",
    )
    SIGNATURE_BYTES.append(sum(signature_bytes(s) for s in signatures))
    edges = measured(
        "buckets",
        lambda: bucket_edges(signatures, range(COLUMNS), settings.threshold),
        lambda pairs: f"{len(pairs):,} pairs",
    )
    duplicates = measured(
        "clusters",
        lambda: find_clusters([edges], order_lookup(signatures)),
        lambda found: f"{sum(len(rows) for rows in found.values()):,} duplicates",
    )
    signatures.clear()
    counts = measured("filter", lambda: tally(plan, duplicates, store, fields))
    print_summary(args, counts, shard_records)


def tally(plan: Any, duplicates: dict[int, dict[int, str]], store: Any, fields: Fields) -> Any:
    counts: dict[tuple[str, str], int] = {}
    for shard in plan.shards:
        for reason, record in filter_shard(
            shard.read(store), duplicates.get(shard.index, {}), fields
        ):
            key = (str(record.get("kind")), reason or "kept")
            counts[key] = counts.get(key, 0) + 1
    return counts


def print_summary(args: argparse.Namespace, counts: Any, shard_records: int) -> None:
    n = args.records
    total_cpu = sum(CPU)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    planted = sum(v for (kind, _), v in counts.items() if kind != "unique")
    found = sum(v for (kind, out), v in counts.items() if kind != "unique" and out == DUPLICATE)
    false = sum(v for (kind, out), v in counts.items() if kind == "unique" and out == DUPLICATE)
    print(f"outcomes (kind, outcome): {dict(sorted(counts.items()))}")
    print(f"records/s per core: {n / total_cpu:,.0f} ({total_cpu:.0f} CPU s for {n:,} records)")
    print(f"peak RSS: {peak:,.0f} MB (all steps in one process)")
    print(f"planted copies found: {found:,} of {planted:,}; unique texts rejected: {false:,}")
    per_record = SIGNATURE_BYTES[0] / n
    print(
        f"cluster pods: signatures {shard_records * per_record / 1e6:.0f} MB of results per "
        f"{shard_records:,}-record shard; buckets {n * per_record / 1e6:.0f} MB (every "
        f"shard's signatures, {per_record:.0f} B per record) + {n * 16 / 1e6:.0f} MB per "
        "column sorted; clusters and filter: the pairs and duplicate maps (above)"
    )
    print(
        "complexity: signatures O(n x tokens), buckets O(columns x n log n) plus the "
        "candidates' checks (128 values each), clusters O(pairs), filter O(n)"
    )


if __name__ == "__main__":
    main()
