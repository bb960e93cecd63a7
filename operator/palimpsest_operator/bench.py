"""Benchmark of one status tick: `python -m palimpsest_operator.bench OUTPUT_URI --shards N`.

A tick's cost must not grow with the number of shards a job has: it reads only the markers
of shards finished since the last tick (plus one listing page) and keeps the counted set as
a compressed bitmap. This benchmark runs the real reconcile pass (fake cluster, real store:
S3 when OUTPUT_URI is s3://, with boto3's usual configuration, or a local folder) over a
filter stage of N shards, each tick under the operator's time budget, and reports:

- rebuild: ticks from an empty status until every committed marker is counted (the cost
  after losing status entirely; MAX_READS_PER_TICK bounds each of those ticks);
- steady: one tick during the run in which `--new` shards finished since the last tick;
- idle: one tick during the run in which nothing new finished;
- the CPU seconds of the idle and steady ticks (all threads), which a busy machine does not
  inflate as it does wall-clock time;
- manifest: the ticks after the last shard, which write the dataset manifest and then the
  dataset card (each reading every marker once, as many as each tick's time budget allows;
  the markers carry a card statistics object like a final stage's): how many, the longest,
  the total;
- the status size in bytes and the process's peak resident memory (`--parts` sets the parts
  each marker lists, which the manifest carries).
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import cache
from typing import Any

from palimpsest.cardstats import count_texts
from palimpsest.commit import OUTPUT_KIND, Marker, Part, marker_uri
from palimpsest.identity import stage_refs
from palimpsest.job import Job, parse_job
from palimpsest.names import API_VERSION, KIND, PLANS_DIR
from palimpsest.stats import Stats
from palimpsest.storage import S3Settings, join, store_for
from palimpsest_operator.cluster import JobView, Resource, WorkloadView
from palimpsest_operator.config import CONFIG
from palimpsest_operator.evictions import FailedPod
from palimpsest_operator.inputs import plan_key
from palimpsest_operator.reconcile import reconcile
from palimpsest_operator.status import merge_patch
from palimpsest_operator.storage import JobStorage

PLAN_ID = "bench"


class BenchCluster:
    """Just enough cluster for a tick: one filter Job whose completed indexes we set."""

    def __init__(self) -> None:
        self.view: JobView | None = None

    def read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        return None

    def read_secret_labels(self, namespace: str, name: str) -> dict[str, str] | None:
        return None

    def read_config_map(self, namespace: str, name: str) -> dict[str, str] | None:
        return None

    def list_jobs(self, namespace: str, owner: str) -> list[JobView]:
        return [self.view] if self.view else []

    def create_job(self, manifest: dict[str, Any]) -> bool:
        self.view = JobView(manifest["metadata"]["name"], "", active=4)
        return True

    def delete_job(self, namespace: str, name: str) -> None:
        self.view = None

    def set_job_suspended(self, namespace: str, name: str, suspended: bool) -> None:
        pass

    def list_failed_pods(self, namespace: str, job: str) -> list[FailedPod]:
        return []

    def find_workload(self, namespace: str, job_uid: str) -> WorkloadView | None:
        return None


def bench_job(output_uri: str) -> Job:
    return parse_job(
        {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": "bench", "namespace": "bench", "uid": "u"},
            "spec": {
                "recipe": "swallowcode",
                "stages": ["filter"],
                "input": {"uri": output_uri.rstrip("/") + "-input"},
                "output": {"uri": output_uri},
            },
        }
    )


@cache
def bench_card() -> dict[str, Any]:
    """A final stage's card statistics of 6,000 texts of varied length, as workers write them."""
    texts = (" x" * (1 + i * 37 % 4000) for i in range(6_000))
    return count_texts(texts, len, "chars").to_dict()


def bench_marker(stage_uri: str, shard: int, parts: int) -> bytes:
    """The marker of one shard of 10,000 records listing `parts` output parts."""
    stats = Stats(records_in=10_000, kept=6_000, seconds=600.0)
    stats.rejects.update({"syntax_error": 1_000, "pylint_score": 3_000})
    listed = [
        Part(join(stage_uri, f"shard-{shard:06d}", f"part-{p:03d}.jsonl.zst"), 150, 90_000)
        for p in range(parts)
    ]
    body = {OUTPUT_KIND: listed} if parts else {}
    stage_id = stage_uri.rsplit("/", 1)[-1]
    return Marker(shard, "bench", stage_id, body, stats, "t", bench_card()).to_json()


def write_markers(stage_uri: str, shards: range, parts: int = 0) -> None:
    """Commit the markers of `shards` through the store (one PUT each, 32 at once)."""
    store = store_for(stage_uri, S3Settings())

    def put(shard: int) -> None:
        store.put_bytes(marker_uri(stage_uri, shard), bench_marker(stage_uri, shard, parts))

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(put, shards))


Seeder = Callable[[str, range, int], None]
"""Commits the markers of a range of shards of a stage, each listing a number of parts."""


def run(
    output_uri: str, shards: int, new: int, parts: int = 0, seed: Seeder = write_markers
) -> dict[str, Any]:
    """Ticks of the operator over a filter stage of `shards` shards, each under the
    operator's time budget (PALIMPSEST_TICK_BUDGET_SECONDS), markers committed by `seed`."""
    job = bench_job(output_uri)
    (ref,) = stage_refs(job, PLAN_ID, {})
    stage_uri = ref.uri(output_uri)
    cluster = BenchCluster()
    storage = JobStorage(store_for(output_uri, S3Settings()))

    def storage_for(job: Job, credentials: Mapping[str, str] | None) -> JobStorage:
        return storage

    manifest = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": "bench", "namespace": "bench", "uid": "u", "generation": 1},
        "spec": {
            "recipe": "swallowcode",
            "stages": ["filter"],
            "input": {"uri": job.input.uri},
            "output": {"uri": output_uri},
        },
    }
    plan_uri = join(output_uri, PLANS_DIR, f"plan-{PLAN_ID}.json")
    storage.store.put_bytes(plan_uri, b"{}")  # the tick checks it exists; no worker reads it
    plan = {
        "id": PLAN_ID,
        "uri": plan_uri,
        "shards": shards,
        "estRecords": 0,
        "estTokens": 0,
        "inputBytes": 0,
        "key": plan_key(job),
    }
    status: dict[str, Any] = {"plan": plan}

    cpu: list[float] = []

    def tick() -> float:
        nonlocal status
        started, cpu_started = time.perf_counter(), time.process_time()
        resource = Resource(manifest, copy.deepcopy(status))
        result = reconcile(resource, cluster, storage_for, budget=CONFIG.tick_budget_seconds)
        merge_patch(status, result.status)
        elapsed = time.perf_counter() - started
        cpu.append(time.process_time() - cpu_started)
        status = result.status
        return elapsed

    first = shards - 2 * new
    seeded = time.perf_counter()
    seed(stage_uri, range(first), parts)
    seed_seconds = time.perf_counter() - seeded
    tick()  # creates the Job
    assert cluster.view is not None
    cluster.view = replace(cluster.view, completed_indexes=f"0-{first - 1}")
    rebuild = []
    while status.get("shards", {}).get("succeeded", 0) < first:
        rebuild.append(tick())
    idle = tick()
    idle_cpu = cpu[-1]
    seed(stage_uri, range(first, first + new), parts)
    cluster.view = replace(cluster.view, completed_indexes=f"0-{first + new - 1}")
    steady = tick()
    steady_cpu = cpu[-1]
    counted = status["shards"]["succeeded"]
    seed(stage_uri, range(first + new, shards), parts)
    cluster.view = replace(cluster.view, completed_indexes=f"0-{shards - 1}", finished="Complete")
    finals = [tick()]
    while status["phase"] != "Succeeded" and len(finals) < 10_000:
        finals.append(tick())  # the manifest and the card are written over several ticks
    return {
        "shards": shards,
        "store": "s3" if output_uri.startswith("s3://") else "local",
        "seed_seconds": round(seed_seconds, 1),
        "rebuild_ticks": len(rebuild),
        "rebuild_seconds": [round(t, 3) for t in rebuild],
        "idle_tick_seconds": round(idle, 4),
        "idle_tick_cpu_seconds": round(idle_cpu, 4),
        f"steady_tick_seconds_{new}_new_shards": round(steady, 4),
        "steady_tick_cpu_seconds": round(steady_cpu, 4),
        "counted_after_steady_tick": counted,
        "parts_per_shard": parts,
        "manifest_ticks": len(finals),
        "manifest_tick_max_seconds": round(max(finals), 3),
        "manifest_seconds_total": round(sum(finals), 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "phase": status["phase"],
        "status_bytes": len(json.dumps(status)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m palimpsest_operator.bench")
    parser.add_argument("output_uri", help="s3://bucket/prefix or a local folder (emptied: no)")
    parser.add_argument("--shards", type=int, default=10_000)
    parser.add_argument("--new", type=int, default=100, help="shards finished in the steady tick")
    parser.add_argument("--parts", type=int, default=0, help="output parts listed per marker")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.output_uri, args.shards, args.new, args.parts), indent=1))


if __name__ == "__main__":
    main()
