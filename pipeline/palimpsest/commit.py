"""Exactly-once shard results on storage without rename (S3), by conditional markers.

Each attempt writes its parts under keys of its own (`.../shard-000042/<attempt>/...`). It
commits by creating the shard's marker with a conditional put (`If-None-Match: *`); the marker
lists the committed parts with their record counts and sizes, and carries the shard's stats.
The first writer wins; a losing attempt deletes its own parts. Readers (the next stage, the
operator, local summaries) go through markers only, never by listing parts, so parts of
interrupted or losing attempts never count.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from palimpsest.records import RawRecord, Record, RecordWriter, read_jsonl, read_parquet
from palimpsest.stats import Stats
from palimpsest.storage import Store, join

MARKERS = "_markers"
PART_FORMAT = "jsonl.zst"
OUTPUT_KIND = "output"
REJECTS_KIND = "rejects"


def marker_uri(stage_uri: str, shard: int) -> str:
    return join(stage_uri, MARKERS, f"shard-{shard:06d}.json")


def new_attempt_id() -> str:
    """Unique per attempt; carries the pod name when there is one, for debugging."""
    pod = os.environ.get("HOSTNAME", "local")
    return f"{pod[-24:]}-{uuid.uuid4().hex[:10]}"


@dataclass(frozen=True)
class Part:
    uri: str
    records: int
    bytes: int


@dataclass(frozen=True)
class Marker:
    shard: int
    attempt: str
    stage_id: str
    parts: dict[str, list[Part]]
    stats: Stats
    committed_at: str

    def to_json(self) -> bytes:
        body = {
            "shard": self.shard,
            "attempt": self.attempt,
            "stage_id": self.stage_id,
            "parts": {k: [p.__dict__ for p in v] for k, v in self.parts.items()},
            "stats": self.stats.to_dict(),
            "committed_at": self.committed_at,
        }
        return json.dumps(body, sort_keys=True).encode("utf-8")

    @staticmethod
    def from_json(data: bytes) -> Marker:
        body: dict[str, Any] = json.loads(data)
        return Marker(
            shard=int(body["shard"]),
            attempt=str(body["attempt"]),
            stage_id=str(body["stage_id"]),
            parts={k: [Part(**p) for p in v] for k, v in body["parts"].items()},
            stats=Stats.from_dict(body["stats"]),
            committed_at=str(body["committed_at"]),
        )


def read_marker(store: Store, stage_uri: str, shard: int) -> Marker | None:
    uri = marker_uri(stage_uri, shard)
    if not store.exists(uri):
        return None
    return Marker.from_json(store.read_bytes(uri))


def read_committed(store: Store, marker: Marker, kind: str = OUTPUT_KIND) -> Iterator[RawRecord]:
    """The records of a committed shard, through its marker's part list."""
    for part in marker.parts.get(kind, []):
        if part.uri.endswith(".parquet"):
            yield from read_parquet(store, part.uri)
        else:
            yield from read_jsonl(store, part.uri)


class ShardOutput:
    """One attempt at one shard of one stage: write outputs and rejects, then commit or abort."""

    def __init__(
        self,
        store: Store,
        stage_uri: str,
        stage_id: str,
        shard: int,
        attempt: str | None = None,
        part_format: str = PART_FORMAT,
    ) -> None:
        self.store = store
        self.stage_uri = stage_uri
        self.stage_id = stage_id
        self.shard = shard
        self.attempt = attempt or new_attempt_id()
        self._format = part_format
        self._writers: dict[str, list[RecordWriter]] = {OUTPUT_KIND: [], REJECTS_KIND: []}
        self._parts: dict[str, list[Part]] = {OUTPUT_KIND: [], REJECTS_KIND: []}

    def part_uri(self, kind: str, number: int) -> str:
        return join(
            self.stage_uri,
            kind,
            f"shard-{self.shard:06d}",
            self.attempt,
            f"part-{number:05d}.{self._format}",
        )

    def _writer(self, kind: str) -> RecordWriter:
        writers = self._writers[kind]
        if not writers:
            writers.append(RecordWriter(self.store, self.part_uri(kind, 0)))
        return writers[-1]

    def write(self, record: Record) -> None:
        self._writer(OUTPUT_KIND).write(record)

    def write_reject(self, record: Record) -> None:
        self._writer(REJECTS_KIND).write(record)

    def roll(self) -> dict[str, list[Part]]:
        """Close the current parts so far (a chunk checkpoint); later records go to new parts.

        Returns the parts this call closed, by kind (a kind with nothing new is left out)."""
        closed: dict[str, list[Part]] = {}
        for kind, writers in self._writers.items():
            if writers and writers[-1].count:
                writer = writers[-1]
                size = writer.close()
                part = Part(writer.uri, writer.count, size)
                self._parts[kind].append(part)
                closed[kind] = [part]
                writers.append(
                    RecordWriter(self.store, self.part_uri(kind, len(self._parts[kind])))
                )
        return closed

    def _close_all(self) -> None:
        for kind, writers in self._writers.items():
            for writer in writers[len(self._parts[kind]) :]:
                if writer.count:
                    size = writer.close()
                    self._parts[kind].append(Part(writer.uri, writer.count, size))
                else:
                    writer.discard()
            self._writers[kind] = []

    def commit(self, stats: Stats, extra_parts: dict[str, list[Part]] | None = None) -> bool:
        """Publish this attempt's parts; False (and parts deleted) when another attempt won."""
        self._close_all()
        parts = {k: [*(extra_parts or {}).get(k, []), *v] for k, v in self._parts.items()}
        marker = Marker(
            shard=self.shard,
            attempt=self.attempt,
            stage_id=self.stage_id,
            parts=parts,
            stats=stats,
            committed_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        )
        if self.store.put_bytes(
            marker_uri(self.stage_uri, self.shard), marker.to_json(), if_absent=True
        ):
            return True
        self._delete_own_parts()
        return False

    def abort(self) -> None:
        for writers in self._writers.values():
            for writer in writers:
                writer.discard()
        self._writers = {k: [] for k in self._writers}
        self._delete_own_parts()

    def _delete_own_parts(self) -> None:
        for parts in self._parts.values():
            for part in parts:
                self.store.delete(part.uri)
