"""The dataset card of a finished job, written by the operator next to the manifest, over ticks.

The card (`palimpsest.card`: README.md in the Hugging Face dataset-card format) sums the
final stage's per-shard card statistics, which the workers put into the markers. A job of
100,000 shards has 100,000 markers, so, like the manifest, they are read a bounded number of
chunks per tick (`CHUNK_SHARDS` markers a chunk, `CHUNKS_PER_TICK` chunks, no new chunk after
`TICK_SECONDS`; a chunk is cut where the tick's deadline stops its reads), and memory stays
constant: after each chunk the running sum is saved as a small object at a key named by the
next shard (`_manifests/<stage-id>/card-<next>.json`) and status keeps that position, so the
next tick (or a restarted operator) continues from it. Rewriting a chunk is idempotent: the
same markers give the same sum at the same key. The
per-stage counts come from the tallies the operator already keeps in status. The operator
never reads records: a marker without card statistics (its shard committed by a worker that
did not count them) is left out of the text figures, and the card says how many were.
Last, the final stage's output folder is listed a page at a time: when it holds objects no
marker lists (parts of attempts that died before committing, until `palimpsest gc --delete`),
the card names the committed parts one by one, from the manifest's part lists, instead of
its glob.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from palimpsest.card import CARD_NAME, render_card, stage_glob
from palimpsest.cardstats import CardStats, merge
from palimpsest.commit import OUTPUT_KIND, CorruptMarkerError
from palimpsest.document import JobDocument
from palimpsest.identity import StageRef
from palimpsest.names import MANIFESTS_DIR
from palimpsest.report import ReportData, StageSummary
from palimpsest.storage import join
from palimpsest_operator.manifest import LIST_SHARDS, list_uri
from palimpsest_operator.progress import Clock, OrderedReads
from palimpsest_operator.status import StageView
from palimpsest_operator.storage import JobStorage

CHUNK_SHARDS = 1000
"""Markers read per chunk; the running sum is saved after each."""
CHUNKS_PER_TICK = 20
"""Most chunks (or listing pages) one tick reads."""
LIST_PAGE = 1000
"""Objects per listing page of the final stage's output folder (one S3 LIST request)."""
MAX_LISTED_PARTS = 10_000
"""Most parts the card names one by one when parts no marker lists lie beside them."""
TICK_SECONDS = 20.0
"""No new chunk is started after this many seconds of a tick."""


def card_uri(output_uri: str) -> str:
    return join(output_uri, CARD_NAME)


def partial_uri(output_uri: str, last: StageRef, next_shard: int) -> str:
    """The sum over the final stage's shards before `next_shard`."""
    return join(output_uri, MANIFESTS_DIR, last.stage_id, f"card-{next_shard:06d}.json")


@dataclass(frozen=True)
class CardPosition:
    """How far the card got: shards summed, then objects listed under the final stage's output
    folder (to find parts no marker lists, which the card's glob would also match)."""

    next: int = 0
    listed: int = 0
    after: str = ""
    """The last URI listed ("" before the first page)."""
    listing_done: bool = False


def position(value: Any, stage_id: str) -> CardPosition:
    """The position saved in status.card (the start, also when it is of another final stage)."""
    if not isinstance(value, dict) or value.get("stageId") != stage_id:
        return CardPosition()
    return CardPosition(
        int(value["next"]),
        int(value.get("listed", 0)),
        str(value.get("after", "")),
        bool(value.get("listingDone", False)),
    )


def position_status(at: CardPosition, stage_id: str) -> dict[str, Any]:
    return {
        "stageId": stage_id,
        "next": at.next,
        "listed": at.listed,
        "after": at.after,
        "listingDone": at.listing_done,
    }


def write_card_step(
    storage: JobStorage,
    document: JobDocument,
    views: Sequence[StageView],
    at: CardPosition,
    deadline: float | None = None,
    clock: Clock = time.monotonic,
) -> tuple[CardPosition, str | None]:
    """Sum the next chunks of markers, then list the next pages of the output folder; returns
    the position to continue from, and the card's URI once it is written (None while more
    ticks are needed). Nothing new starts after the tick's `deadline` (a `clock` time), so a
    tick that finished the manifest may leave the whole card to the next."""
    job = document.job
    last = document.stage_refs()[-1]
    shards = views[-1].tally.total
    total, parts = load_partial(storage, job.output_uri, last, at.next)
    reads = OrderedReads(storage, last.uri(job.output_uri), at.next, deadline, clock)
    started = clock()
    steps = 0
    while at.next < shards or not at.listing_done:
        if steps >= CHUNKS_PER_TICK or (steps and clock() - started >= TICK_SECONDS):
            return at, None
        if deadline is not None and clock() >= deadline:
            return at, None
        if at.next < shards:
            chunk = range(at.next, min(at.next + CHUNK_SHARDS, shards))
            parts, stop = sum_chunk(storage, document, last, chunk, reads, total, parts)
            at = replace(at, next=stop)
            if stop < chunk.stop:
                return at, None
        else:
            at = list_page(storage, join(last.uri(job.output_uri), OUTPUT_KIND), at)
        steps += 1
    data = ReportData(
        job_name=job.name,
        recipe=job.recipe,
        output_uri=job.output_uri,
        stages=tuple(
            StageSummary(v.kind, v.stage_id, v.tally.total, v.tally.count, v.tally.stats)
            for v in views
        ),
    )
    files = card_files(storage, job.output_uri, last, shards, parts, at.listed, job.output_format)
    text = render_card(document, data, total, files, strays=at.listed - parts)
    uri = card_uri(job.output_uri)
    storage.store.put_bytes(uri, text.encode("utf-8"))
    return at, uri


def list_page(storage: JobStorage, folder: str, at: CardPosition) -> CardPosition:
    page = storage.store.list_after(folder + "/", at.after, LIST_PAGE)
    return replace(
        at,
        listed=at.listed + len(page),
        after=page[-1].uri if page else at.after,
        listing_done=len(page) < LIST_PAGE,
    )


def card_files(
    storage: JobStorage,
    output_uri: str,
    last: StageRef,
    shards: int,
    parts: int,
    listed: int,
    output_format: str,
) -> list[str]:
    """The glob over the final stage's parts when every object under it is a committed part;
    else the committed parts one by one from the manifest's part lists (up to
    MAX_LISTED_PARTS; beyond, the glob, and the card says what else it matches)."""
    if listed == parts or not parts or parts > MAX_LISTED_PARTS:
        return [stage_glob(last, output_format)]
    prefix = output_uri.rstrip("/") + "/"
    files = []
    for first in range(0, shards, LIST_SHARDS):
        for line in storage.store.read_bytes(list_uri(output_uri, last, first)).splitlines():
            if line.strip():
                files.append(str(json.loads(line)["uri"]).removeprefix(prefix))
    return sorted(files)


def load_partial(
    storage: JobStorage, output_uri: str, last: StageRef, next_shard: int
) -> tuple[CardStats, int]:
    """The saved sum before `next_shard`, and the number of committed parts it covers."""
    if next_shard == 0:
        return CardStats(), 0
    body = json.loads(storage.store.read_bytes(partial_uri(output_uri, last, next_shard)))
    return CardStats.from_dict(body), int(body.get("committed_parts", 0))


def sum_chunk(
    storage: JobStorage,
    document: JobDocument,
    last: StageRef,
    chunk: range,
    reads: OrderedReads,
    total: CardStats,
    parts: int,
) -> tuple[int, int]:
    """Add the markers of `chunk` into `total` (in place) up to where the deadline stops the
    reads, and save the sum there; returns the number of committed output parts so far and
    the first shard not summed."""
    job = document.job
    stop = chunk.start
    for marker in reads.markers(chunk):
        stop += 1
        if isinstance(marker, CorruptMarkerError):
            raise marker  # counted once, so readable then: a storage fault, not a bad marker
        if marker is None:
            continue
        parts += len(marker.parts.get(OUTPUT_KIND, []))
        if marker.card is None:
            total.uncounted += 1
        else:
            merge(total, CardStats.from_dict(marker.card))
    if stop > chunk.start:
        body = json.dumps({**total.to_dict(), "committed_parts": parts}, sort_keys=True)
        storage.store.put_bytes(partial_uri(job.output_uri, last, stop), body.encode("utf-8"))
    return parts, stop
