"""Operator settings, read once from the environment (the Deployment or the Helm values).

Each setting names its variable, unit, default and why the default is what it is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


def _float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


def _strings(name: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in os.environ.get(name, "").split(",") if v.strip())


def _int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


@dataclass(frozen=True)
class OperatorConfig:
    tick_seconds: float = _float("PALIMPSEST_TICK_SECONDS", 15.0)
    """Seconds between status ticks of one RewriteJob (PALIMPSEST_TICK_SECONDS). 15 s keeps
    status fresh for jobs that run for hours while costing one S3 LIST and a handful of GETs
    per tick."""
    metrics_port: int = _int("PALIMPSEST_METRICS_PORT", 8080)
    """Port of the Prometheus /metrics endpoint (PALIMPSEST_METRICS_PORT); 0 turns it off."""
    liveness_port: int = _int("PALIMPSEST_LIVENESS_PORT", 8081)
    """Port of the liveness endpoint /healthz (PALIMPSEST_LIVENESS_PORT); 0 turns it off."""
    s3_connect_timeout: float = _float("PALIMPSEST_S3_CONNECT_TIMEOUT", 2.0)
    """Seconds the operator waits to connect to a job's S3 endpoint
    (PALIMPSEST_S3_CONNECT_TIMEOUT). Short: one tenant's unreachable endpoint must not hold a
    tick thread that other tenants' ticks wait for."""
    s3_read_timeout: float = _float("PALIMPSEST_S3_READ_TIMEOUT", 5.0)
    """Seconds the operator waits for the next bytes of an S3 answer
    (PALIMPSEST_S3_READ_TIMEOUT); a marker or a listing page answers in milliseconds."""
    s3_retries: int = _int("PALIMPSEST_S3_RETRIES", 1)
    """Retries of a failed S3 call of the operator, standard retry mode (PALIMPSEST_S3_RETRIES):
    the next tick is the retry that matters, so a call that gets no answer gives up after
    2 x (connect + read timeout) = 14 s at most."""
    tick_budget_seconds: float = _float("PALIMPSEST_TICK_BUDGET_SECONDS", 10.0)
    """Seconds one tick may spend reading markers (PALIMPSEST_TICK_BUDGET_SECONDS), to count
    them or to write the dataset manifest's part lists; reads not started by then are left to
    the next tick, so a slow endpoint or a huge job shortens ticks, not stalls."""
    backoff_max_seconds: float = _float("PALIMPSEST_BACKOFF_MAX_SECONDS", 300.0)
    """Longest wait before retrying a job whose tick failed on S3 or the API
    (PALIMPSEST_BACKOFF_MAX_SECONDS); the wait doubles from the tick period per failure."""
    retry_slots: int = _int("PALIMPSEST_RETRY_SLOTS", 2)
    """Ticks of jobs whose last tick failed that may run at once (PALIMPSEST_RETRY_SLOTS), of
    the 8 tick threads: the other threads stay free for healthy jobs."""
    allowed_image_prefixes: tuple[str, ...] = _strings("PALIMPSEST_ALLOWED_IMAGE_PREFIXES")
    """Comma-separated prefixes every image of a RewriteJob's pods must start with, sidecars
    included (PALIMPSEST_ALLOWED_IMAGE_PREFIXES, e.g. `ghcr.io/palimpsest-dev/`); empty allows
    any image. See trust.py and manifests/README.md."""
    secret_refs: str = os.environ.get("PALIMPSEST_SECRET_REFS") or "any"
    """Whether RewriteJobs may name Secrets (PALIMPSEST_SECRET_REFS): `never`, `labelled`
    (only Secrets labelled palimpsest.dev/usable: "true") or `any` (the default, as before
    this setting existed)."""


CONFIG = OperatorConfig()
