"""Speed and false matches of the decontam stage on real code, with HumanEval planted in it.

Reads the bundled sample corpus (300 Python files of The Stack), cycles it to `--records`
records, and plants every HumanEval task (prompt and canonical solution) into one more record
each, inside an unrelated file. Runs the stage in this process (the index built once, as a
worker builds it) and prints records/s and MB/s on one core, the planted copies found (recall)
and the corpus records matched (false matches, with what they matched, to look at).

    .venv/bin/python benchmarks/decontam_speed.py [--records 3000]
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

from palimpsest.records import Fields, RawRecord, Record
from palimpsest.stages.decontam import (
    BenchmarkIndex,
    Decontaminator,
    DecontamSettings,
    humaneval_items,
    load_benchmarks,
)
from palimpsest.stats import Stats

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "data" / "python-sample.jsonl.gz"


def corpus(count: int) -> list[Record]:
    with gzip.open(SAMPLE, "rt", encoding="utf-8") as handle:
        files = [json.loads(line)["text"] for line in handle if line.strip()]
    return [{"id": f"stack-{i}", "text": files[i % len(files)]} for i in range(count)]


def planted() -> list[Record]:
    host = (
        "import sys\n\nVERBOSE = '-v' in sys.argv\n\n\n{}\n\n"
        "if __name__ == '__main__':\n    main()\n"
    )
    return [
        {"id": f"planted-{item.task_id}", "text": host.format(item.texts[0] + item.texts[1])}
        for item in humaneval_items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=3000, help="corpus records (cycled)")
    args = parser.parse_args()
    records = corpus(args.records) + planted()
    started = time.perf_counter()
    settings = DecontamSettings()
    stage = Decontaminator(BenchmarkIndex(load_benchmarks(settings), settings), Fields())
    built = time.perf_counter() - started
    rejected: list[Record] = []
    stats = Stats()
    items = [RawRecord("bench", i, r) for i, r in enumerate(records)]
    started = time.perf_counter()
    stage.run(items, lambda _: None, rejected.append, stats)
    seconds = time.perf_counter() - started
    megabytes = sum(len(r["text"].encode("utf-8")) for r in records) / 1e6
    found = {r["id"] for r in rejected if r["id"].startswith("planted-")}
    false = [r for r in rejected if not r["id"].startswith("planted-")]
    print(f"index: {built:.2f} s for {len(humaneval_items())} HumanEval tasks")
    print(
        f"{len(records)} records, {megabytes:.1f} MB in {seconds:.2f} s: "
        f"{len(records) / seconds:.0f} records/s, {megabytes / seconds:.2f} MB/s (one core)"
    )
    print(f"planted copies found: {len(found)}/{len(humaneval_items())}")
    print(f"corpus records matched: {len(false)}/{args.records}")
    for record in false[:10]:
        print(f"  {record['id']}: {record['reject_detail']}")


if __name__ == "__main__":
    main()
