"""Prometheus metrics of the RewriteJobs the operator follows, set from each tick's status.

Gauges carry the job's namespace and name, so a dashboard shows shards, records, tokens and
the phase of every job; a histogram times the ticks themselves.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from prometheus_client import Gauge, Histogram, start_http_server

from palimpsest_operator import constants as c

_LABELS: Final = ("namespace", "name")

SHARDS = Gauge(
    "palimpsest_shards", "Shards of the running (or last) stage by state.", [*_LABELS, "state"]
)
RECORDS = Gauge(
    "palimpsest_records",
    "Records in (first stage), kept (last stage), rejected.",
    [*_LABELS, "kind"],
)
TOKENS = Gauge("palimpsest_tokens", "Prompt and generated tokens, all stages.", [*_LABELS, "kind"])
GPU_HOURS = Gauge("palimpsest_gpu_hours", "GPU-hours spent by rewrite stages.", _LABELS)
PHASE = Gauge(
    "palimpsest_phase", "1 for the job's current phase, 0 for the others.", [*_LABELS, "phase"]
)
TICK_SECONDS = Histogram(
    "palimpsest_tick_seconds",
    "Duration of one status tick.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)


def observe(namespace: str, name: str, status: Mapping[str, Any]) -> None:
    for state, value in (status.get("shards") or {}).items():
        SHARDS.labels(namespace, name, state).set(value)
    for kind, value in (status.get("records") or {}).items():
        RECORDS.labels(namespace, name, kind).set(value)
    for kind, value in (status.get("tokens") or {}).items():
        TOKENS.labels(namespace, name, kind).set(value)
    GPU_HOURS.labels(namespace, name).set(float(status.get("gpuHours") or 0.0))
    for phase in c.PHASES:
        PHASE.labels(namespace, name, phase).set(1.0 if status.get("phase") == phase else 0.0)


def forget(namespace: str, name: str) -> None:
    """Drop a deleted job's series."""
    for gauge in (SHARDS, RECORDS, TOKENS, GPU_HOURS, PHASE):
        for labels in list(gauge._metrics):
            if labels[:2] == (namespace, name):
                gauge.remove(*labels)


def serve(port: int) -> None:
    if port:
        start_http_server(port)
