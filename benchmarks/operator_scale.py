"""The operator at scale: status ticks and the dataset manifest of a job of N shards x P parts.

Runs `palimpsest_operator.bench` (the real reconcile pass, each tick under the operator's time
budget) against moto's S3 server in a child process, so the peak resident memory reported is
the operator side's alone. Markers are committed inside the server (`seeded_s3.py`), ~15x
faster than one PUT each. Prints bench's figures as JSON plus the seeding rate. One size per
run, from the repository root, niced as other work shares the machine:

    nice -n 10 .venv/bin/python benchmarks/operator_scale.py --shards 100000 --parts 40
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "pipeline"), str(REPO / "operator")]

import boto3  # noqa: E402
from tests.support import s3server  # noqa: E402

from palimpsest_operator import bench  # noqa: E402

BUCKET = "palimpsest-bench"
SEED_CHUNK = 5000
"""Shards per seeding request: a few seconds of the server's time each."""


def seeder(endpoint: str) -> bench.Seeder:
    def seed(stage_uri: str, shards: range, parts: int) -> None:
        bucket, _, stage_key = stage_uri.removeprefix("s3://").partition("/")
        for first in range(shards.start, shards.stop, SEED_CHUNK):
            query = urllib.parse.urlencode(
                {
                    "bucket": bucket,
                    "stage": stage_key,
                    "first": first,
                    "end": min(first + SEED_CHUNK, shards.stop),
                    "parts": parts,
                }
            )
            request = urllib.request.Request(f"{endpoint}/_bench/markers?{query}", method="POST")
            with urllib.request.urlopen(request, timeout=600) as response:
                response.read()

    return seed


def main() -> None:
    parser = argparse.ArgumentParser(prog="operator_scale.py")
    parser.add_argument("--shards", type=int, default=10_000)
    parser.add_argument("--parts", type=int, default=40)
    parser.add_argument("--new", type=int, default=100, help="shards finished in the steady tick")
    args = parser.parse_args()
    command = (sys.executable, str(REPO / "benchmarks" / "seeded_s3.py"))
    server, proc = s3server.start(command=command)
    try:
        os.environ.update(server.env())
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        started = time.perf_counter()
        figures = bench.run(
            f"s3://{BUCKET}/scale", args.shards, args.new, args.parts, seeder(server.endpoint)
        )
        figures["wall_seconds"] = round(time.perf_counter() - started, 1)
        figures["seed_markers_per_second"] = round(
            (args.shards - 2 * args.new) / max(figures["seed_seconds"], 1e-9)
        )
        print(json.dumps(figures, indent=1))
    finally:
        s3server.stop(proc)


if __name__ == "__main__":
    main()
