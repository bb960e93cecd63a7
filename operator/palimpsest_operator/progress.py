"""Counting committed shards from S3 markers, incrementally and restart-safe.

A stage's `Tally` holds which shards have been counted (a bitmap) and the sum of their
markers' stats. Each tick reads only markers of shards not yet counted: those the stage's Job
reports as completed, plus one page of the marker listing after a cursor that walks the
folder (so shards committed while no Job watched, e.g. before a restart or by an earlier
run of the same stage, are found too). The tally is saved into status together with the
totals in one patch, so a crash between reading markers and writing status loses nothing and
counts nothing twice: the next tick simply reads the same markers again.

The bitmap is zlib-compressed and base64-encoded: 100,000 shards take a few hundred bytes
when most are done (or none are), about 17 kB at worst.
"""

from __future__ import annotations

import base64
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from palimpsest.commit import CorruptMarkerError, Marker
from palimpsest.stats import Stats

MARKER_READ_THREADS: Final = 16
"""Markers fetched at once: S3 GETs are latency-bound, so a few threads hide the latency."""

MAX_READS_PER_TICK: Final = 5000
"""Most markers one tick reads; the rest are read by the next ticks, so a tick stays short."""

LIST_PAGE: Final = 1000
"""Marker keys listed per tick after the cursor (one S3 LIST request)."""

TOP_REJECTS: Final = 5
"""Reject reasons shown per stage in status."""


class MarkerSource(Protocol):
    """Where a stage's markers live (S3 or a local folder)."""

    def read_marker(self, stage_uri: str, shard: int) -> Marker | None: ...

    def list_marker_shards(self, stage_uri: str, after: int, limit: int) -> list[int]: ...


@dataclass
class Tally:
    """What one stage has counted so far: shards, summed stats, GPU-seconds, listing cursor."""

    total: int
    done: bytearray
    stats: Stats = field(default_factory=Stats)
    gpu_seconds: float = 0.0
    cursor: int = -1

    @staticmethod
    def empty(total: int) -> Tally:
        return Tally(total=total, done=bytearray((total + 7) // 8))

    @property
    def count(self) -> int:
        return int.from_bytes(self.done, "little").bit_count()

    @property
    def complete(self) -> bool:
        return self.count >= self.total

    def has(self, shard: int) -> bool:
        return bool(self.done[shard >> 3] & (1 << (shard & 7)))

    def add(self, marker: Marker) -> bool:
        """Count a marker once; False when its shard was already counted or is out of range."""
        shard = marker.shard
        if not 0 <= shard < self.total or self.has(shard):
            return False
        self.done[shard >> 3] |= 1 << (shard & 7)
        self.stats.merge(marker.stats)
        self.gpu_seconds += marker.stats.engine_seconds * marker.stats.gpus
        return True

    def missing(self, shards: Iterable[int]) -> list[int]:
        return [s for s in shards if 0 <= s < self.total and not self.has(s)]

    def encode(self) -> dict[str, Any]:
        packed = base64.b64encode(zlib.compress(bytes(self.done), 9)).decode("ascii")
        return {
            "total": self.total,
            "counted": self.count,
            "done": packed,
            "stats": self.stats.to_dict(),
            "gpuSeconds": round(self.gpu_seconds, 3),
            "cursor": self.cursor,
        }

    @staticmethod
    def decode(data: dict[str, Any], total: int) -> Tally:
        """A saved tally; a missing or mismatched one (another plan) starts from nothing."""
        if not data or int(data.get("total", -1)) != total:
            return Tally.empty(total)
        done = bytearray(zlib.decompress(base64.b64decode(data["done"])))
        if len(done) != (total + 7) // 8:
            return Tally.empty(total)
        return Tally(
            total=total,
            done=done,
            stats=Stats.from_dict(data.get("stats", {})),
            gpu_seconds=float(data.get("gpuSeconds", 0.0)),
            cursor=int(data.get("cursor", -1)),
        )


def advance(
    tally: Tally,
    source: MarkerSource,
    stage_uri: str,
    candidates: Iterable[int],
    scan: bool = True,
    corrupt: list[CorruptMarkerError] | None = None,
    deadline: float | None = None,
) -> int:
    """Count the markers of `candidates` not yet counted, plus one listing page; returns how
    many shards were newly counted. Unreadable markers are left uncounted and, when `corrupt`
    is given, added to it (otherwise their error is raised). Reads not started by `deadline`
    (time.monotonic) are left to the next tick."""
    to_read = tally.missing(candidates)
    if scan and not tally.complete:
        to_read += tally.missing(_scan(tally, source, stage_uri))
    to_read = sorted(set(to_read))[:MAX_READS_PER_TICK]
    added = 0
    for marker in read_markers(source, stage_uri, to_read, deadline):
        if isinstance(marker, CorruptMarkerError):
            if corrupt is None:
                raise marker
            corrupt.append(marker)
        elif marker is not None and tally.add(marker):
            added += 1
    return added


def _scan(tally: Tally, source: MarkerSource, stage_uri: str) -> list[int]:
    """One page of committed shards after the cursor; the cursor wraps at the end."""
    found = source.list_marker_shards(stage_uri, tally.cursor, LIST_PAGE)
    if len(found) < LIST_PAGE:
        tally.cursor = -1
    else:
        tally.cursor = found[-1]
    return found


def read_markers(
    source: MarkerSource, stage_uri: str, shards: Sequence[int], deadline: float | None = None
) -> Iterator[Marker | CorruptMarkerError | None]:
    """The markers of `shards` in order: None where none exists or the read would start after
    `deadline`, the error where one is unreadable (so one bad marker does not stop the others
    from being counted)."""

    def read(shard: int) -> Marker | CorruptMarkerError | None:
        if deadline is not None and time.monotonic() > deadline:
            return None
        try:
            return source.read_marker(stage_uri, shard)
        except CorruptMarkerError as exc:
            return exc

    if len(shards) <= 1:
        yield from (read(s) for s in shards)
        return
    with ThreadPoolExecutor(MARKER_READ_THREADS) as pool:
        yield from pool.map(read, shards)


Clock = Callable[[], float]


@dataclass(frozen=True)
class OrderedReads:
    """Marker reads of one step of a tick (the manifest's lists, the card's chunks), in shard
    order: none starts after `deadline` on `clock`, except the read of shard `first`, the
    step's first, so every tick moves on. Reads run on a few threads, so at most that many
    finish after the deadline."""

    source: MarkerSource
    stage_uri: str
    first: int
    deadline: float | None
    clock: Clock = time.monotonic

    def markers(self, shards: Sequence[int]) -> Iterator[Marker | CorruptMarkerError | None]:
        """The markers of `shards` in order, up to the first read too late to start; None
        where a shard has no marker."""
        with ThreadPoolExecutor(MARKER_READ_THREADS) as pool:
            for result in pool.map(self._read, shards):
                if isinstance(result, _Late):
                    return
                yield result

    def _read(self, shard: int) -> Marker | CorruptMarkerError | _Late | None:
        late = self.deadline is not None and self.clock() > self.deadline
        if late and shard != self.first:
            return _Late()
        try:
            return self.source.read_marker(self.stage_uri, shard)
        except CorruptMarkerError as exc:
            return exc


class _Late:
    """A marker read that was not started: the tick's deadline had passed."""


def parse_indexes(text: str | None) -> list[int]:
    """A Job's `completedIndexes`/`failedIndexes` ("1,3-5,7") as a list of indexes."""
    out: list[int] = []
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        first, _, last = part.partition("-")
        out.extend(range(int(first), int(last or first) + 1))
    return out


def count_indexes(text: str | None) -> int:
    total = 0
    for part in (text or "").split(","):
        part = part.strip()
        if part:
            first, _, last = part.partition("-")
            total += int(last or first) - int(first) + 1
    return total


def shards_of_indexes(
    indexes: Iterable[int], block: int, total: int, order: Sequence[int] | None = None
) -> list[int]:
    """The shards a set of Job indexes covers when each index handles `block` shards: of the
    plan, or of `order` (the shard list of a Job that retries only some shards)."""
    if order is not None:
        return [s for i in indexes for s in order[i * block : (i + 1) * block]]
    return [s for i in indexes for s in range(i * block, min((i + 1) * block, total))]


def top_rejects(stats: Stats, limit: int = TOP_REJECTS) -> dict[str, int]:
    return dict(stats.rejects.most_common(limit))
