"""Multi-tenant ticks: a healthy RewriteJob's tick latency alone and beside 8 broken tenants.

The operator ticks every RewriteJob on one pool of 8 threads (Kopf's executor). This runs the
operator's own tick (`handlers.guarded_tick`: the time budget, the backoff, the S3 clients
with the operator's timeouts) on such a pool, each job on its own timer like Kopf's (a job's
next tick is due one period after its last one ended), for:

- a healthy job on a moto S3 server whose filter Job commits `--per-tick` shards per period;
- 8 jobs whose S3 endpoint is a local TCP socket that accepts connections and never answers.

Each scenario runs for `--seconds`; printed are the healthy job's tick latencies (from when a
tick was due to when it ended, so time spent waiting for a free thread counts) alone and with
the 8, their ratio (goal <= 2), its time from the first tick to Succeeded (all `--shards`
committed and the manifest written) alone and with the 8, and how many ticks the broken jobs
took and how long each held a thread. Run from the repository root:

    .venv/bin/python benchmarks/tenant_ticks.py [--seconds 75] [--period 2]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import socket
import statistics
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "pipeline"), str(REPO / "operator")]

from tests.support import s3server  # noqa: E402

from palimpsest.identity import stage_refs  # noqa: E402
from palimpsest.job import Job  # noqa: E402
from palimpsest.names import API_VERSION, KIND, PLANS_DIR  # noqa: E402
from palimpsest.storage import join  # noqa: E402
from palimpsest_operator import handlers  # noqa: E402
from palimpsest_operator.backoff import Backoff  # noqa: E402
from palimpsest_operator.bench import PLAN_ID, BenchCluster, bench_job, write_markers  # noqa: E402
from palimpsest_operator.cluster import Resource  # noqa: E402
from palimpsest_operator.config import CONFIG  # noqa: E402
from palimpsest_operator.inputs import plan_key  # noqa: E402
from palimpsest_operator.storage import JobStorage  # noqa: E402

KOPF_THREADS = 8
"""settings.execution.max_workers in handlers.configure."""
BROKEN_JOBS = 8


class Blackhole:
    """A TCP endpoint that accepts every connection and never answers."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=256)
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _accept(self) -> None:
        while True:
            conn, _ = self.sock.accept()
            self.held.append(conn)


@dataclass
class Tenant:
    """One RewriteJob on its own timer: its manifest, status and the ticks it took."""

    manifest: dict[str, Any]
    status: dict[str, Any]
    cluster: BenchCluster = field(default_factory=BenchCluster)
    latencies: list[float] = field(default_factory=list)
    held: list[float] = field(default_factory=list)
    """Seconds each tick that ran held a thread (a skipped tick holds it for nothing)."""


def manifest(name: str, output_uri: str, endpoint: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": "bench", "uid": name, "generation": 1},
        "spec": {
            "recipe": "swallowcode",
            "stages": ["filter"],
            "input": {"uri": output_uri.rstrip("/") + "-input"},
            "output": {"uri": output_uri},
            "storage": {"endpoint": endpoint, "region": s3server.REGION},
        },
    }


def healthy_tenant(endpoint: str, shards: int) -> tuple[Tenant, Job, str]:
    output = "s3://healthy/out"
    job = bench_job(output)
    store = handlers.storage_for(job, None).store
    plan_uri = join(output, PLANS_DIR, f"plan-{PLAN_ID}.json")
    store.put_bytes(plan_uri, b"{}")  # the tick checks it exists; no worker reads it
    plan = {"id": PLAN_ID, "uri": plan_uri, "shards": shards, "estRecords": 0, "estTokens": 0}
    plan |= {"inputBytes": 0, "key": plan_key(job)}
    tenant = Tenant(manifest("healthy", output, endpoint), {"plan": plan})
    (ref,) = stage_refs(job, PLAN_ID, {})
    return tenant, job, ref.uri(output)


@dataclass
class Committer:
    """The healthy job's filter Job: `per_tick` more shards committed after each tick."""

    tenant: Tenant
    job: Job
    stage_uri: str
    shards: int
    per_tick: int
    committed: int = 0

    def __call__(self) -> None:
        last = min(self.committed + self.per_tick, self.shards)
        write_markers(self.stage_uri, range(self.committed, last))
        self.committed = last
        view = self.tenant.cluster.view
        if view is not None and last:
            finished = "Complete" if last == self.shards else None
            self.tenant.cluster.view = replace(
                view, completed_indexes=f"0-{last - 1}", finished=finished
            )


def run_tick(tenant: Tenant, backoff: Backoff) -> None:
    started = time.monotonic()
    resource = Resource(copy.deepcopy(tenant.manifest), copy.deepcopy(tenant.status))
    outcome = handlers.guarded_tick(resource, tenant.cluster, handlers.storage_for, backoff)
    if outcome is not None:
        tenant.status = outcome.status
        tenant.held.append(time.monotonic() - started)


def scenario(
    healthy: Tenant, commit: Committer, broken: list[Tenant], seconds: float, period: float
) -> dict[str, Any]:
    """Kopf-like timers on one pool: each job's next tick is due `period` after its last."""
    backoff = Backoff(period, CONFIG.backoff_max_seconds, CONFIG.retry_slots)
    tenants = [healthy, *broken]
    due = dict.fromkeys(range(len(tenants)), time.monotonic())
    running: dict[int, Future[None]] = {}
    start = time.monotonic()
    end = start + seconds
    succeeded: float | None = None
    with ThreadPoolExecutor(KOPF_THREADS) as pool:
        while time.monotonic() < end:
            now = time.monotonic()
            for i, tenant in enumerate(tenants):
                if i in running and running[i].done():
                    if i == 0:
                        healthy.latencies.append(time.monotonic() - due[0])
                        commit()
                        if succeeded is None and healthy.status.get("phase") == "Succeeded":
                            succeeded = time.monotonic() - start
                    due[i] = time.monotonic() + period
                    del running[i]
                if i not in running and now >= due[i]:
                    running[i] = pool.submit(run_tick, tenant, backoff)
            time.sleep(0.01)
        for future in running.values():
            future.cancel()
    held = [t for tenant in broken for t in tenant.held]
    lat = healthy.latencies[1:]  # the first tick creates the Job
    return {
        "healthy_ticks": len(lat),
        "healthy_tick_p50_s": round(statistics.median(lat), 3),
        "healthy_tick_max_s": round(max(lat), 3),
        "healthy_shards_counted": healthy.status.get("shards", {}).get("succeeded"),
        "healthy_seconds_to_succeeded": None if succeeded is None else round(succeeded, 1),
        "broken_ticks_run": len(held),
        "broken_tick_hold_max_s": round(max(held), 2) if held else None,
        "broken_message": broken[0].status.get("message", "")[:160] if broken else None,
    }


def run(seconds: float, period: float, shards: int, per_tick: int) -> dict[str, Any]:
    server, proc = s3server.start()
    blackhole = Blackhole()
    os.environ.update(server.env())
    try:
        handlers.storage_for(bench_job("s3://healthy/out"), None).store._client.create_bucket(  # type: ignore[attr-defined]
            Bucket="healthy"
        )
        results: dict[str, Any] = {}
        for label, broken_count in (("alone", 0), ("with_8_blackholed", BROKEN_JOBS)):
            healthy, job, stage_uri = healthy_tenant(server.endpoint, shards)
            commit = Committer(healthy, job, stage_uri, shards, per_tick)
            broken = [
                Tenant(manifest(f"broken-{i}", f"s3://broken-{i}/out", blackhole.endpoint), {})
                for i in range(broken_count)
            ]
            results[label] = scenario(healthy, commit, broken, seconds, period)
            _wipe(handlers.storage_for(job, None), stage_uri)
        alone = results["alone"]["healthy_tick_p50_s"]
        results["p50_ratio"] = round(results["with_8_blackholed"]["healthy_tick_p50_s"] / alone, 2)
        done = [results[k]["healthy_seconds_to_succeeded"] for k in ("alone", "with_8_blackholed")]
        if None not in done:
            results["succeeded_ratio"] = round(done[1] / done[0], 2)
        results["settings"] = {
            "period_s": period,
            "seconds": seconds,
            "threads": KOPF_THREADS,
            "operator": dataclasses.asdict(CONFIG),
        }
        return results
    finally:
        s3server.stop(proc)


def _wipe(storage: JobStorage, stage_uri: str) -> None:
    for info in storage.store.list(stage_uri + "/"):
        storage.store.delete(info.uri)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=75.0, help="per scenario")
    parser.add_argument("--period", type=float, default=2.0, help="tick period (seconds)")
    parser.add_argument("--shards", type=int, default=400, help="of the healthy job")
    parser.add_argument("--per-tick", type=int, default=20, help="shards committed per period")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.seconds, args.period, args.shards, args.per_tick), indent=1))


if __name__ == "__main__":
    main()
