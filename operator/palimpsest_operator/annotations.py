"""The actions a user asks for with annotations on a RewriteJob, each taken once per value.

- `palimpsest.dev/retry-failed: <new value>` on a Failed job: new Jobs (attempt + 1) for the
  stages not yet complete; committed shards are skipped by the workers.
- `palimpsest.dev/rerun: <new value>`: every stage's markers are removed and everything runs
  again under a new attempt; the counts start from zero.
The values already acted on are kept in status (`retried`), so re-applying the same
annotation does nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from palimpsest.commit import MARKERS
from palimpsest.identity import StageRef
from palimpsest.storage import Store, join
from palimpsest_operator import constants as c
from palimpsest_operator.cluster import Event


@dataclass(frozen=True)
class Requested:
    """What the annotations ask of this tick."""

    attempt: int
    """The Job attempt the stages run under (part of the Job names)."""
    retried: dict[str, Any]
    """The new `status.retried`: the annotation values acted on, and the attempt."""
    forget_counts: bool = False
    """The counts so far no longer hold (a rerun): start from nothing."""
    events: list[Event] = field(default_factory=list)


def requested(
    annotations: Mapping[str, str],
    status: Mapping[str, Any],
    store: Store,
    output_uri: str,
    refs: Sequence[StageRef],
) -> Requested:
    """Act once on a new rerun or retry-failed annotation value."""
    retried = dict(status.get("retried") or {})
    attempt = int(retried.get("attempt", 0))
    events: list[Event] = []
    forget = False
    retry = annotations.get(c.ANNOTATION_RETRY_FAILED)
    if retry is not None and retry != retried.get("retryFailed"):
        retried["retryFailed"] = retry
        if status.get("phase") == c.FAILED:
            attempt += 1
            events.append(
                Event(
                    "Normal", c.REASON_RETRYING, f"retrying uncommitted shards (attempt {attempt})"
                )
            )
    rerun = annotations.get(c.ANNOTATION_RERUN)
    if rerun is not None and rerun != retried.get("rerun"):
        retried["rerun"] = rerun
        attempt += 1
        forget = True
        deleted = sum(forget_stage(store, ref.uri(output_uri)) for ref in refs)
        events.append(
            Event(
                "Normal",
                c.REASON_RERUN,
                f"rerun requested: removed {deleted} shard markers, running every stage again",
            )
        )
    retried["attempt"] = attempt
    return Requested(attempt, retried, forget, events)


def forget_stage(store: Store, stage_uri: str) -> int:
    """Delete a stage's markers, so that its shards run again (their parts stay behind)."""
    listing = store.list(join(stage_uri, MARKERS))
    for info in listing:
        store.delete(info.uri)
    return len(listing)
