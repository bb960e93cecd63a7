"""The actions a user asks for with annotations on a RewriteJob, each taken once per value.

- `palimpsest.dev/retry-failed: <new value>` on a Failed job: new Jobs (attempt + 1) for the
  stages not yet complete, each over only the shards its stages have not committed (a shard
  list its indexes count through), so no pod is scheduled for finished work.
- `palimpsest.dev/rerun: <new value>`: first every Job of the previous run is deleted and
  waited for (no old pod may commit into the rerun); then every stage's markers and chunk
  checkpoints are removed and everything runs again under a new attempt; the counts start
  from zero.
The values already acted on are kept in status (`retried`), so re-applying the same
annotation does nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from palimpsest.commit import MARKERS
from palimpsest.identity import StageRef
from palimpsest.rewrite.checkpoint import CHECKPOINTS
from palimpsest.storage import ObjectInfo, StorageError, Store, create_object, join
from palimpsest_operator import constants as c
from palimpsest_operator.cluster import Event
from palimpsest_operator.jobs import ShardList
from palimpsest_operator.progress import Tally


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


def rerun_pending(annotations: Mapping[str, str], status: Mapping[str, Any]) -> bool:
    """A rerun annotation value not acted on yet."""
    rerun = annotations.get(c.ANNOTATION_RERUN)
    return rerun is not None and rerun != (status.get("retried") or {}).get("rerun")


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
    if rerun_pending(annotations, status):
        retried["rerun"] = annotations[c.ANNOTATION_RERUN]
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
    """Delete a stage's markers and chunk checkpoints, so that its shards run again from the
    start (their parts stay behind, for `palimpsest gc`); returns the markers deleted."""
    listing = _listing(store, join(stage_uri, MARKERS))
    for info in [*listing, *_listing(store, join(stage_uri, CHECKPOINTS))]:
        store.delete(info.uri)
    return len(listing)


def _listing(store: Store, prefix: str) -> list[ObjectInfo]:
    try:
        return store.list(prefix + "/")
    except StorageError:  # a local folder that was never written: nothing to delete
        return []


def retry_list(store: Store, output_uri: str, job_name: str, tallies: Sequence[Tally]) -> ShardList:
    """The shards a retry Job runs: those some stage of its group has not committed. Fixed by
    the first tick that creates the Job; later ticks read the same list back."""
    uri = join(output_uri, c.RETRIES_DIR, f"{job_name}.json")
    missing = sorted({s for t in tallies for s in t.missing(range(t.total))})
    existing = create_object(store, uri, json.dumps(missing).encode())
    return ShardList(uri, tuple(missing) if existing is None else parse_shard_list(uri, existing))


def read_shard_list(store: Store, uri: str) -> list[int]:
    return list(parse_shard_list(uri, store.read_bytes(uri)))


def parse_shard_list(uri: str, data: bytes) -> tuple[int, ...]:
    try:
        shards = json.loads(data)
    except ValueError:
        shards = None
    if not isinstance(shards, list) or not all(type(s) is int for s in shards):
        raise StorageError(f"{uri}: not a JSON list of shard numbers")
    return tuple(shards)
