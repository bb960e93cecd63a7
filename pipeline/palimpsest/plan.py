"""Shard plans: cut an input listing into shards that cover every record exactly once.

A plan is a pure function of the input listing (URIs, sizes, ETags), a small sample of each
object's bytes (to estimate bytes per record) and the sharding settings, so the same input
gives the same plan and the same plan id. Large uncompressed JSONL objects are cut into byte
ranges (a line belongs to the range holding its first byte, see `records.read_jsonl`);
Parquet objects are cut at row-group boundaries; compressed JSONL objects stay whole; small
pieces are grouped until a shard is full.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import IO, Any

from palimpsest.records import (
    JSONL,
    PARQUET,
    CorruptObjectError,
    RawRecord,
    compression_of,
    format_of,
    read_jsonl,
    read_parquet,
)
from palimpsest.storage import ObjectInfo, Store

PLAN_VERSION = 1

# Bytes read from the head of each object to estimate its bytes per record. 1 MiB sees
# hundreds of typical code files; the estimate only sizes shards, never decides coverage.
SAMPLE_BYTES = 1 << 20

# Names under an input prefix that are never data (markers, hidden files, plans).
IGNORED_PREFIXES = ("_", ".")


@dataclass(frozen=True)
class Piece:
    """A slice of one object: a byte range of JSONL, some row groups of Parquet, or all of it."""

    uri: str
    format: str
    start: int = 0
    end: int | None = None
    row_groups: tuple[int, ...] | None = None
    est_records: int = 0
    bytes: int = 0

    def read(self, store: Store) -> Iterator[RawRecord]:
        if self.format == PARQUET:
            return read_parquet(store, self.uri, self.row_groups)
        return read_jsonl(store, self.uri, self.start, self.end)


@dataclass(frozen=True)
class Shard:
    index: int
    pieces: tuple[Piece, ...]
    est_records: int
    bytes: int

    def read(self, store: Store) -> Iterator[RawRecord]:
        for piece in self.pieces:
            yield from piece.read(store)


INPUT_FORMATS = ("auto", "jsonl", "parquet")
"""How input objects are read: `auto` by their names (.jsonl/.json/.ndjson, optionally .gz or
.zst, and .parquet; other objects are skipped and listed in the plan), or every object as
JSONL (compression still by suffix) or as Parquet, whatever its name."""


@dataclass(frozen=True)
class PlanSettings:
    """How big a shard is (by estimated records, or by input bytes: exactly one is set), and
    how objects are read (one of INPUT_FORMATS)."""

    records_per_shard: int | None = 10_000
    bytes_per_shard: int | None = None
    format: str = "auto"

    def __post_init__(self) -> None:
        if self.format not in INPUT_FORMATS:
            raise ValueError(
                f"input.format: must be one of {', '.join(INPUT_FORMATS)}, got {self.format!r}"
            )
        if (self.records_per_shard is None) == (self.bytes_per_shard is None):
            raise ValueError("sharding: set exactly one of recordsPerShard and bytesPerShard")
        for name, value in (
            ("recordsPerShard", self.records_per_shard),
            ("bytesPerShard", self.bytes_per_shard),
        ):
            if value is not None and value < 1:
                raise ValueError(f"sharding.{name} must be >= 1, got {value}")


@dataclass(frozen=True)
class ShardPlan:
    plan_id: str
    input_uri: str
    settings: PlanSettings
    shards: tuple[Shard, ...]
    skipped: tuple[str, ...] = field(default=())

    @property
    def est_records(self) -> int:
        return sum(shard.est_records for shard in self.shards)

    def to_json(self) -> bytes:
        body = {"version": PLAN_VERSION, **asdict(self)}
        return json.dumps(body, indent=1, sort_keys=True).encode("utf-8")

    @staticmethod
    def from_json(data: bytes) -> ShardPlan:
        body = json.loads(data)
        if body.get("version") != PLAN_VERSION:
            raise ValueError(f"plan version {body.get('version')} is not {PLAN_VERSION}")
        shards = tuple(
            Shard(
                index=s["index"],
                pieces=tuple(_piece_from_dict(p) for p in s["pieces"]),
                est_records=s["est_records"],
                bytes=s["bytes"],
            )
            for s in body["shards"]
        )
        return ShardPlan(
            plan_id=body["plan_id"],
            input_uri=body["input_uri"],
            settings=PlanSettings(**body["settings"]),
            shards=shards,
            skipped=tuple(body.get("skipped", ())),
        )


def _piece_from_dict(data: dict[str, Any]) -> Piece:
    groups = data.get("row_groups")
    return Piece(**{**data, "row_groups": tuple(groups) if groups is not None else None})


def plan_id_of(input_uri: str, listing: list[ObjectInfo], settings: PlanSettings) -> str:
    """Content hash of what decides a plan: the listing and the sharding settings."""
    body = {
        "version": PLAN_VERSION,
        "input": input_uri,
        "objects": [[o.uri, o.size, o.etag] for o in listing],
        "settings": asdict(settings),
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def is_data_object(uri: str, input_uri: str) -> bool:
    relative = uri[len(input_uri.rstrip("/")) :].lstrip("/")
    parts = relative.split("/") if relative else [uri.rsplit("/", 1)[-1]]
    return not any(part.startswith(IGNORED_PREFIXES) for part in parts if part)


def make_plan(store: Store, input_uri: str, settings: PlanSettings) -> ShardPlan:
    """List the input and cut it into shards."""
    listing = [o for o in store.list(input_uri) if is_data_object(o.uri, input_uri)]
    data: list[tuple[ObjectInfo, str]] = []
    skipped = []
    for obj in listing:
        fmt = object_format(obj.uri, settings.format)
        if fmt is None:
            skipped.append(obj.uri)
        else:
            data.append((obj, fmt))
    if not data:
        raise ValueError(f"input {input_uri}: no .jsonl[.gz|.zst] or .parquet objects found")
    pieces: list[Piece] = []
    for obj, fmt in data:
        pieces.extend(_pieces_of(store, obj, fmt, settings))
    shards = _group(pieces, settings)
    return ShardPlan(
        plan_id=plan_id_of(input_uri, [obj for obj, _ in data], settings),
        input_uri=input_uri,
        settings=settings,
        shards=shards,
        skipped=tuple(skipped),
    )


def object_format(uri: str, setting: str) -> str | None:
    """How one object is read under the `format` setting; None: not data (skipped)."""
    if setting != "auto":
        return setting
    try:
        return format_of(uri)
    except ValueError:
        return None


def _pieces_of(store: Store, obj: ObjectInfo, fmt: str, settings: PlanSettings) -> list[Piece]:
    if fmt == PARQUET:
        return _parquet_pieces(store, obj, settings)
    bytes_per_record = _sample_bytes_per_record(store, obj)
    est_total = max(1, round(obj.size / bytes_per_record)) if obj.size else 0
    if compression_of(obj.uri) is not None:
        return [Piece(obj.uri, JSONL, est_records=est_total, bytes=obj.size)]
    target = settings.bytes_per_shard or max(
        1, round(settings.records_per_shard or 1) * bytes_per_record
    )
    count = max(1, math.ceil(obj.size / target))
    if count == 1:
        return [Piece(obj.uri, JSONL, est_records=est_total, bytes=obj.size)]
    bounds = [round(i * obj.size / count) for i in range(count + 1)]
    return [
        Piece(
            obj.uri,
            JSONL,
            start=bounds[i],
            end=bounds[i + 1],
            est_records=max(1, round((bounds[i + 1] - bounds[i]) / bytes_per_record)),
            bytes=bounds[i + 1] - bounds[i],
        )
        for i in range(count)
    ]


class _CountingReader:
    """Counts bytes pulled from a raw stream, to relate decompressed lines to object bytes."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.count += len(data)
        return data

    def readable(self) -> bool:
        return True


def _sample_bytes_per_record(store: Store, obj: ObjectInfo) -> float:
    """Object bytes per record, from the head of the object."""
    if obj.size == 0:
        return 1.0
    compression = compression_of(obj.uri)
    stream = store.open_range(obj.uri, 0, None if compression else min(obj.size, SAMPLE_BYTES))
    counting: Any = _CountingReader(stream)
    lines = 0
    seen = 0
    try:
        if compression == "gzip":
            import gzip

            decoded: Any = gzip.GzipFile(fileobj=counting)
        elif compression == "zstd":
            import zstandard

            decoded = zstandard.ZstdDecompressor().stream_reader(counting)
        else:
            decoded = counting
        while seen < SAMPLE_BYTES:
            chunk = decoded.read(65536)
            if not chunk:
                break
            seen += len(chunk)
            lines += chunk.count(b"\n")
    except (EOFError, OSError, ValueError) as exc:  # gzip/zstd errors on a damaged object
        raise CorruptObjectError(f"{obj.uri}: damaged {compression} stream: {exc}") from exc
    finally:
        stream.close()
    consumed = counting.count if compression else seen
    return max(1.0, consumed / max(lines, 1))


def _parquet_pieces(store: Store, obj: ObjectInfo, settings: PlanSettings) -> list[Piece]:
    import pyarrow.parquet as pq

    from palimpsest.records import open_seekable

    with open_seekable(store, obj.uri, obj.size) as handle:
        meta = pq.ParquetFile(handle).metadata
    groups = [
        (g, meta.row_group(g).num_rows, meta.row_group(g).total_byte_size)
        for g in range(meta.num_row_groups)
    ]
    pieces: list[Piece] = []
    current: list[int] = []
    rows = size = 0
    for group, group_rows, group_bytes in groups:
        if current and _full(rows + group_rows, size + group_bytes, settings):
            pieces.append(
                Piece(obj.uri, PARQUET, row_groups=tuple(current), est_records=rows, bytes=size)
            )
            current, rows, size = [], 0, 0
        current.append(group)
        rows += group_rows
        size += group_bytes
    if current or not pieces:
        pieces.append(
            Piece(obj.uri, PARQUET, row_groups=tuple(current), est_records=rows, bytes=size)
        )
    return pieces


def _full(records: int, size: int, settings: PlanSettings) -> bool:
    if settings.records_per_shard is not None:
        return records > settings.records_per_shard
    return size > (settings.bytes_per_shard or 0)


def _group(pieces: list[Piece], settings: PlanSettings) -> tuple[Shard, ...]:
    """Greedily pack pieces, in listing order, into shards of at most the target size."""
    shards: list[Shard] = []
    current: list[Piece] = []
    records = size = 0
    for piece in pieces:
        if current and _full(records + piece.est_records, size + piece.bytes, settings):
            shards.append(Shard(len(shards), tuple(current), records, size))
            current, records, size = [], 0, 0
        current.append(piece)
        records += piece.est_records
        size += piece.bytes
    if current:
        shards.append(Shard(len(shards), tuple(current), records, size))
    return tuple(shards)
