"""Exactly-once shard results on storage without rename (S3), by conditional markers.

Each attempt writes its parts under keys of its own (`.../shard-000042/<attempt>/...`). It
commits by creating the shard's marker with a conditional put (`If-None-Match: *`); the marker
lists the committed parts with their record counts and sizes, and carries the shard's stats.
The first writer wins. Readers (the next stage, the operator, local summaries) go through
markers only, never by listing parts, so parts of interrupted or losing attempts never count.

Nothing a marker or checkpoint may list is ever deleted: a losing attempt deletes only its
parts that the winner's marker does not list, and an attempt that gives up keeps every part it
checkpointed (another attempt may have adopted it). What is left over, `palimpsest gc` finds.
The outcome of a conditional put can be ambiguous (the response lost, a retried PUT answered
412 because the first one landed, a timeout); it is settled by reading the marker back and
comparing its attempt id, never by assuming. `check_conditional_put` stops a run early on an
endpoint that ignores `If-None-Match`, where two attempts could both believe they committed.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from palimpsest.names import PROBE_DIR
from palimpsest.records import RawRecord, Record, RecordWriter, read_jsonl, read_parquet
from palimpsest.stats import Stats
from palimpsest.storage import StorageError, Store, create_object, join

MARKERS = "_markers"
PART_FORMAT = "jsonl.zst"
OUTPUT_FORMATS = {"jsonl": PART_FORMAT, "parquet": "parquet"}
"""`spec.output.format` -> the file suffix of the final stage's output parts. Rejects and
earlier stages are always JSONL: only the dataset itself is asked for in another format, and
reject records differ in shape from reason to reason."""
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
    card: dict[str, Any] | None = None
    """The final stage's dataset-card statistics of its kept texts (`cardstats.CardStats`)."""

    def to_json(self) -> bytes:
        body = {
            "shard": self.shard,
            "attempt": self.attempt,
            "stage_id": self.stage_id,
            "parts": {k: [p.__dict__ for p in v] for k, v in self.parts.items()},
            "stats": self.stats.to_dict(),
            "committed_at": self.committed_at,
        }
        if self.card is not None:
            body["card"] = self.card
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
            card=body["card"] if isinstance(body.get("card"), dict) else None,
        )


class ConditionalPutError(StorageError):
    """The endpoint does not honour `If-None-Match: *`, so commits cannot be exactly-once."""


def check_conditional_put(store: Store, output_uri: str) -> None:
    """Two put-if-absent on a scratch key: the second must be refused. Raises
    ConditionalPutError naming the location when it is not."""
    uri = join(output_uri, PROBE_DIR, f"conditional-put-{new_attempt_id()}")
    try:
        if not store.put_bytes(uri, b"first", if_absent=True):
            raise ConditionalPutError(f"{uri}: a put-if-absent on a new key was refused")
        if store.put_bytes(uri, b"second", if_absent=True):
            raise ConditionalPutError(
                f"{output_uri}: the storage endpoint ignores If-None-Match (a second "
                "put-if-absent replaced the object), so shard commits cannot be exactly-once; "
                "use an S3 endpoint with conditional writes (AWS S3, MinIO >= 2024, Ceph >= 19)"
            )
    finally:
        store.delete(uri)


def publish_marker(store: Store, marker: Marker, stage_uri: str) -> Marker:
    """Create the shard's marker unless one exists; returns the marker that holds the shard
    now (ours, or the winner's). Ambiguous outcomes are settled by `storage.create_object`."""
    uri = marker_uri(stage_uri, marker.shard)
    other = create_object(store, uri, marker.to_json())
    return marker if other is None else _parse_marker(uri, other, marker.shard)


def read_marker(store: Store, stage_uri: str, shard: int) -> Marker | None:
    uri = marker_uri(stage_uri, shard)
    data = store.read_if_exists(uri)
    return None if data is None else _parse_marker(uri, data, shard)


class CorruptMarkerError(StorageError):
    """A marker that is not JSON or not a marker's shape: the same bytes fail every read."""

    def __init__(self, message: str, uri: str, shard: int) -> None:
        super().__init__(message)
        self.uri = uri
        self.shard = shard


def _parse_marker(uri: str, data: bytes, shard: int) -> Marker:
    try:
        return Marker.from_json(data)
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptMarkerError(
            f"{uri}: not a valid shard marker ({type(exc).__name__}: {exc}); "
            "delete it to run the shard again",
            uri,
            shard,
        ) from exc


def read_committed(store: Store, marker: Marker, kind: str = OUTPUT_KIND) -> Iterator[RawRecord]:
    """The records of a committed shard, through its marker's part list."""
    return read_parts(store, marker.parts.get(kind, []))


def read_parts(store: Store, parts: Iterable[Part]) -> Iterator[RawRecord]:
    for part in parts:
        if part.uri.endswith(".parquet"):
            yield from read_parquet(store, part.uri)
        else:
            yield from read_jsonl(store, part.uri)


Describe = Callable[[list[Part]], dict[str, Any]]
"""A shard's committed output parts -> its dataset-card statistics (see `stagerun`)."""


class ShardOutput:
    """One attempt at one shard of one stage: write outputs and rejects, then commit or abort."""

    def __init__(
        self,
        store: Store,
        stage_uri: str,
        stage_id: str,
        shard: int,
        attempt: str | None = None,
        output_format: str = PART_FORMAT,
    ) -> None:
        """`output_format`: the suffix of the output parts (rejects are always PART_FORMAT)."""
        self.store = store
        self.stage_uri = stage_uri
        self.stage_id = stage_id
        self.shard = shard
        self.attempt = attempt or new_attempt_id()
        self._formats = {OUTPUT_KIND: output_format, REJECTS_KIND: PART_FORMAT}
        self._writers: dict[str, list[RecordWriter]] = {OUTPUT_KIND: [], REJECTS_KIND: []}
        self._parts: dict[str, list[Part]] = {OUTPUT_KIND: [], REJECTS_KIND: []}

    def part_uri(self, kind: str, number: int) -> str:
        return join(
            self.stage_uri,
            kind,
            f"shard-{self.shard:06d}",
            self.attempt,
            f"part-{number:05d}.{self._formats[kind]}",
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
        closed, uploads = self.roll_local()
        for upload in uploads:
            upload()
        return closed

    def roll_local(self) -> tuple[dict[str, list[Part]], list[Callable[[], None]]]:
        """`roll` without storage I/O: the closed parts, and the uploads still to run (in
        order, e.g. on a thread) before anything may list the parts."""
        closed: dict[str, list[Part]] = {}
        uploads: list[Callable[[], None]] = []
        for kind, writers in self._writers.items():
            if writers and writers[-1].count:
                writer = writers[-1]
                part = Part(writer.uri, writer.count, writer.finish())
                uploads.append(writer.upload)
                self._parts[kind].append(part)
                closed[kind] = [part]
                writers.append(
                    RecordWriter(self.store, self.part_uri(kind, len(self._parts[kind])))
                )
        return closed, uploads

    def _close_all(self) -> None:
        for kind, writers in self._writers.items():
            for writer in writers[len(self._parts[kind]) :]:
                if writer.count:
                    size = writer.close()
                    self._parts[kind].append(Part(writer.uri, writer.count, size))
                else:
                    writer.discard()
            self._writers[kind] = []

    def commit(
        self,
        stats: Stats,
        extra_parts: dict[str, list[Part]] | None = None,
        describe: Describe | None = None,
    ) -> bool:
        """Publish this attempt's parts; False when another attempt won (then this attempt's
        parts that the winner does not list are deleted). `describe` gives the marker's card
        statistics from the output parts it will list."""
        self._close_all()
        parts = {k: [*(extra_parts or {}).get(k, []), *v] for k, v in self._parts.items()}
        marker = Marker(
            shard=self.shard,
            attempt=self.attempt,
            stage_id=self.stage_id,
            parts=parts,
            stats=stats,
            committed_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            card=describe(parts[OUTPUT_KIND]) if describe else None,
        )
        winner = publish_marker(self.store, marker, self.stage_uri)
        if winner.attempt == self.attempt:
            return True
        listed = {p.uri for kind_parts in winner.parts.values() for p in kind_parts}
        for own in self._parts.values():
            for part in own:
                if part.uri not in listed:
                    self.store.delete(part.uri)
        return False

    def abort(self) -> None:
        """Give the shard up: discard the parts still open. Closed parts stay: a checkpoint
        (adopted by another attempt) or a marker put whose outcome is unknown may list them."""
        for kind, writers in self._writers.items():
            for writer in writers[len(self._parts[kind]) :]:
                writer.discard()
        self._writers = {k: [] for k in self._writers}
