"""The final dataset manifest: the last stage's committed parts, streamed out over ticks.

Readers of a finished job take its output from here (or from the markers), never by listing
part folders, where parts of losing or interrupted attempts may lie.

A job of 100,000 shards has millions of parts, so the manifest is never held in memory: the
parts are written as JSON Lines lists of at most `LIST_SHARDS` shards each
(`_manifests/<stage-id>/parts-<first shard>.jsonl`, one line per part), the position kept in
status so the next tick continues. A tick's time is bounded by its deadline (the operator's
PALIMPSEST_TICK_BUDGET_SECONDS, see config.py): no marker read starts after it, and the list
being built is cut where the reads stopped and written as it is; the next list starts at the
cut and ends at the next multiple of `LIST_SHARDS`. Status keeps those cuts (one at most per
tick), so the lists are always the multiples of `LIST_SHARDS` plus the cuts. The manifest
itself (`_manifests/<stage-id>.json`), written last, holds the totals and the lists' URIs.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from typing import Any

from palimpsest.commit import OUTPUT_KIND, CorruptMarkerError
from palimpsest.identity import StageRef
from palimpsest.names import MANIFESTS_DIR
from palimpsest.storage import join
from palimpsest_operator.progress import Clock, OrderedReads
from palimpsest_operator.storage import JobStorage

LIST_SHARDS = 1000
"""Shards per part list: at 40 parts a shard, a list is ~5 MB of JSON, built in memory."""
LISTS_PER_TICK = 20
"""Most part lists one tick writes, also when its deadline would allow more."""


def manifest_uri(output_uri: str, last: StageRef) -> str:
    return join(output_uri, MANIFESTS_DIR, f"{last.stage_id}.json")


def list_uri(output_uri: str, last: StageRef, first_shard: int) -> str:
    return join(output_uri, MANIFESTS_DIR, last.stage_id, f"parts-{first_shard:06d}.jsonl")


@dataclass(frozen=True)
class ManifestProgress:
    """How far the manifest is written: shards before `next` are in part lists."""

    stage_id: str
    next: int = 0
    records: int = 0
    bytes: int = 0
    cuts: tuple[int, ...] = ()
    """First shards of the lists that start off a multiple of LIST_SHARDS (after a cut)."""

    def to_status(self) -> dict[str, Any]:
        return {
            "stageId": self.stage_id,
            "next": self.next,
            "records": self.records,
            "bytes": self.bytes,
            "cuts": list(self.cuts),
        }

    @staticmethod
    def from_status(value: Any, stage_id: str) -> ManifestProgress:
        if not isinstance(value, dict) or value.get("stageId") != stage_id:
            return ManifestProgress(stage_id)
        return ManifestProgress(
            stage_id,
            int(value["next"]),
            int(value["records"]),
            int(value["bytes"]),
            tuple(int(c) for c in value.get("cuts") or ()),
        )

    def list_starts(self, shards: int) -> list[int]:
        return sorted({*range(0, shards, LIST_SHARDS), *self.cuts})


def write_manifest_step(
    storage: JobStorage,
    owner: str,
    output_uri: str,
    last: StageRef,
    shards: int,
    progress: ManifestProgress,
    deadline: float | None = None,
    clock: Clock = time.monotonic,
) -> tuple[ManifestProgress, str | None]:
    """Write the next part lists until `deadline` (on `clock`); returns the progress, and the
    manifest's URI once the last list and the manifest itself are written (None while more
    ticks are needed). The first marker of a step is read whatever the clock says, so every
    tick moves on."""
    reads = OrderedReads(storage, last.uri(output_uri), progress.next, deadline, clock)
    for _ in range(LISTS_PER_TICK):
        if progress.next >= shards:
            break
        progress, cut = _write_list(storage, output_uri, last, shards, progress, reads)
        if cut:
            return progress, None
    if progress.next < shards:
        return progress, None
    body = {
        "rewriteJob": owner,
        "stage": last.kind,
        "stageId": last.stage_id,
        "shards": shards,
        "records": progress.records,
        "bytes": progress.bytes,
        "partLists": [list_uri(output_uri, last, s) for s in progress.list_starts(shards)],
    }
    uri = manifest_uri(output_uri, last)
    storage.store.put_bytes(uri, json.dumps(body, indent=1).encode("utf-8"))
    return progress, uri


def _write_list(
    storage: JobStorage,
    output_uri: str,
    last: StageRef,
    shards: int,
    progress: ManifestProgress,
    reads: OrderedReads,
) -> tuple[ManifestProgress, bool]:
    """Write the list that starts at `progress.next`; True when the deadline cut it short."""
    first = progress.next
    end = min((first // LIST_SHARDS + 1) * LIST_SHARDS, shards)
    lines: list[bytes] = []
    records = size = 0
    after = first
    for marker in reads.markers(range(first, end)):
        after += 1
        if isinstance(marker, CorruptMarkerError):
            raise marker  # counted once, so readable then: a storage fault, not a bad marker
        if marker is None:
            continue
        for part in marker.parts.get(OUTPUT_KIND, []):
            lines.append(json.dumps({"shard": marker.shard, **dataclasses.asdict(part)}).encode())
            records += part.records
            size += part.bytes
    if after == first:
        return progress, True
    storage.store.put_bytes(list_uri(output_uri, last, first), b"\n".join(lines) + b"\n")
    cut = after < end
    return (
        dataclasses.replace(
            progress,
            next=after,
            records=progress.records + records,
            bytes=progress.bytes + size,
            cuts=(*progress.cuts, after) if cut else progress.cuts,
        ),
        cut,
    )
