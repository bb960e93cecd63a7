"""Operator settings, read once from the environment (the Deployment or the Helm values).

Each setting names its variable, unit, default and why the default is what it is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


def _float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


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


CONFIG = OperatorConfig()
