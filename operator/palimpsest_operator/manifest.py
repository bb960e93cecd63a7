"""The final dataset manifest: the last stage's committed parts, streamed out over ticks.

Readers of a finished job take its output from here (or from the markers), never by listing
part folders, where parts of losing or interrupted attempts may lie.

A job of 100,000 shards has millions of parts, so the manifest is never held in memory: the
parts are written as JSON Lines lists of `LIST_SHARDS` shards each
(`_manifests/<stage-id>/parts-<first shard>.jsonl`, one line per part), a bounded number of
lists per tick (`LISTS_PER_TICK`, and no new list once `TICK_SECONDS` have passed), the
position kept in status so the next tick continues. The manifest itself
(`_manifests/<stage-id>.json`), written last, holds the totals and the lists' URIs.
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
from palimpsest_operator.progress import read_markers
from palimpsest_operator.storage import JobStorage

LIST_SHARDS = 1000
"""Shards per part list: at 40 parts a shard, a list is ~5 MB of JSON, built in memory."""
LISTS_PER_TICK = 20
"""Most part lists one tick writes."""
TICK_SECONDS = 20.0
"""No new part list is started after this many seconds of a tick."""


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

    def to_status(self) -> dict[str, Any]:
        return {
            "stageId": self.stage_id,
            "next": self.next,
            "records": self.records,
            "bytes": self.bytes,
        }

    @staticmethod
    def from_status(value: Any, stage_id: str) -> ManifestProgress:
        if not isinstance(value, dict) or value.get("stageId") != stage_id:
            return ManifestProgress(stage_id)
        return ManifestProgress(
            stage_id, int(value["next"]), int(value["records"]), int(value["bytes"])
        )


def write_manifest_step(
    storage: JobStorage,
    owner: str,
    output_uri: str,
    last: StageRef,
    shards: int,
    progress: ManifestProgress,
    clock: Any = time.monotonic,
) -> tuple[ManifestProgress, str | None]:
    """Write the next part lists; returns the progress, and the manifest's URI once the last
    list and the manifest itself are written (None while more ticks are needed)."""
    started = clock()
    written = 0
    while progress.next < shards:
        if written >= LISTS_PER_TICK or (written and clock() - started >= TICK_SECONDS):
            return progress, None
        progress = _write_list(storage, output_uri, last, shards, progress)
        written += 1
    body = {
        "rewriteJob": owner,
        "stage": last.kind,
        "stageId": last.stage_id,
        "shards": shards,
        "records": progress.records,
        "bytes": progress.bytes,
        "partLists": [list_uri(output_uri, last, s) for s in range(0, shards, LIST_SHARDS)],
    }
    uri = manifest_uri(output_uri, last)
    storage.store.put_bytes(uri, json.dumps(body, indent=1).encode("utf-8"))
    return progress, uri


def _write_list(
    storage: JobStorage, output_uri: str, last: StageRef, shards: int, progress: ManifestProgress
) -> ManifestProgress:
    first = progress.next
    chunk = list(range(first, min(first + LIST_SHARDS, shards)))
    lines: list[bytes] = []
    records = size = 0
    for marker in read_markers(storage, last.uri(output_uri), chunk):
        if isinstance(marker, CorruptMarkerError):
            raise marker  # counted once, so readable then: a storage fault, not a bad marker
        if marker is None:
            continue
        for part in marker.parts.get(OUTPUT_KIND, []):
            lines.append(json.dumps({"shard": marker.shard, **dataclasses.asdict(part)}).encode())
            records += part.records
            size += part.bytes
    storage.store.put_bytes(list_uri(output_uri, last, first), b"\n".join(lines) + b"\n")
    return dataclasses.replace(
        progress,
        next=chunk[-1] + 1,
        records=progress.records + records,
        bytes=progress.bytes + size,
    )
