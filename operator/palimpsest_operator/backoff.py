"""Backoff of RewriteJobs whose tick failed: a failing tenant waits, the others tick on.

Kopf runs every RewriteJob's timer on one small thread pool. A job whose S3 endpoint does not
answer fails its tick only after the operator's short S3 timeouts; ticking it again every
period would keep threads busy with it that other tenants' ticks wait for. So a job whose tick
failed is skipped until its wait is over (the tick period after the first failure, doubling
with each further one, up to a cap), and then retried only through one of a few retry slots:
however many tenants are failing, most threads stay free for the healthy ones. One successful
tick forgets a job's failures.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from dataclasses import dataclass


@dataclass(frozen=True)
class Wait:
    until: float
    """Monotonic time before which the job is not ticked."""
    failures: int


class Backoff:
    """Per-job waits after failures and the retry slots; thread-safe (ticks of different
    jobs run in parallel). `admit` and `release` bracket every tick that runs."""

    def __init__(self, base: float, cap: float, slots: int) -> None:
        self.base = base
        self.cap = cap
        self.slots = slots
        self._waits: dict[Hashable, Wait] = {}
        self._retrying: set[Hashable] = set()
        self._lock = threading.Lock()

    def admit(self, key: Hashable, now: float) -> bool:
        """Whether the job ticks now: always when its last tick did not fail; after a failure,
        once its wait is over and a retry slot is free (taken until `release`)."""
        with self._lock:
            wait = self._waits.get(key)
            if wait is None:
                return True
            if now < wait.until or len(self._retrying) >= self.slots:
                return False
            self._retrying.add(key)
            return True

    def release(self, key: Hashable) -> None:
        with self._lock:
            self._retrying.discard(key)

    def failed(self, key: Hashable, now: float) -> float:
        """Record a failed tick; returns the seconds to wait before the next one."""
        with self._lock:
            failures = self._waits[key].failures + 1 if key in self._waits else 1
            delay = float(min(self.cap, self.base * 2 ** (failures - 1)))
            self._waits[key] = Wait(now + delay, failures)
        return delay

    def succeeded(self, key: Hashable) -> None:
        with self._lock:
            self._waits.pop(key, None)
