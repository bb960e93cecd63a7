"""The dataset card of a finished job, written by the operator next to the manifest, over ticks.

The card (`palimpsest.card`: README.md in the Hugging Face dataset-card format) sums the
final stage's per-shard card statistics, which the workers put into the markers. A job of
100,000 shards has 100,000 markers, so, like the manifest, they are read a bounded number of
chunks per tick (`CHUNK_SHARDS` markers a chunk, `CHUNKS_PER_TICK` chunks, no new chunk after
`TICK_SECONDS`), and memory stays constant: after each chunk the running sum is saved as a
small object at a key named by the next shard (`_manifests/<stage-id>/card-<next>.json`) and
status keeps that position, so the next tick (or a restarted operator) continues from it.
Rewriting a chunk is idempotent: the same markers give the same sum at the same key. The
per-stage counts come from the tallies the operator already keeps in status. The operator
never reads records: a marker without card statistics (its shard committed by a worker that
did not count them) is left out of the text figures, and the card says how many were.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from palimpsest.card import CARD_NAME, render_card, stage_glob
from palimpsest.cardstats import CardStats, merge
from palimpsest.commit import CorruptMarkerError
from palimpsest.document import JobDocument
from palimpsest.identity import StageRef
from palimpsest.names import MANIFESTS_DIR
from palimpsest.report import ReportData, StageSummary
from palimpsest.storage import join
from palimpsest_operator.progress import read_markers
from palimpsest_operator.status import StageView
from palimpsest_operator.storage import JobStorage

CHUNK_SHARDS = 1000
"""Markers read per chunk; the running sum is saved after each."""
CHUNKS_PER_TICK = 20
"""Most chunks one tick reads."""
TICK_SECONDS = 20.0
"""No new chunk is started after this many seconds of a tick."""


def card_uri(output_uri: str) -> str:
    return join(output_uri, CARD_NAME)


def partial_uri(output_uri: str, last: StageRef, next_shard: int) -> str:
    """The sum over the final stage's shards before `next_shard`."""
    return join(output_uri, MANIFESTS_DIR, last.stage_id, f"card-{next_shard:06d}.json")


def position(value: Any, stage_id: str) -> int:
    """The shard the card's sum continues from, as saved in status.card (0: start over, also
    when the saved sum is of another final stage)."""
    if not isinstance(value, dict) or value.get("stageId") != stage_id:
        return 0
    return int(value["next"])


def write_card_step(
    storage: JobStorage,
    document: JobDocument,
    views: Sequence[StageView],
    start: int,
    deadline: float | None = None,
    clock: Any = time.monotonic,
) -> tuple[int, str | None]:
    """Sum the next chunks of markers from shard `start`; returns the shard to continue
    from, and the card's URI once the last chunk is summed and the card is written (None
    while more ticks are needed). No chunk starts after the tick's `deadline` (a `clock`
    time), so a tick that finished the manifest may leave the whole card to the next."""
    job = document.job
    last = document.stage_refs()[-1]
    shards = views[-1].tally.total
    total = load_partial(storage, job.output_uri, last, start)
    started = clock()
    chunks = 0
    done = start
    while done < shards:
        if chunks >= CHUNKS_PER_TICK or (chunks and clock() - started >= TICK_SECONDS):
            return done, None
        if deadline is not None and clock() >= deadline:
            return done, None
        done = sum_chunk(
            storage, document, last, range(done, min(done + CHUNK_SHARDS, shards)), total
        )
        chunks += 1
    data = ReportData(
        job_name=job.name,
        recipe=job.recipe,
        output_uri=job.output_uri,
        stages=tuple(
            StageSummary(v.kind, v.stage_id, v.tally.total, v.tally.count, v.tally.stats)
            for v in views
        ),
    )
    text = render_card(document, data, total, [stage_glob(last, job.output_format)])
    uri = card_uri(job.output_uri)
    storage.store.put_bytes(uri, text.encode("utf-8"))
    return done, uri


def load_partial(
    storage: JobStorage, output_uri: str, last: StageRef, next_shard: int
) -> CardStats:
    if next_shard == 0:
        return CardStats()
    body = json.loads(storage.store.read_bytes(partial_uri(output_uri, last, next_shard)))
    return CardStats.from_dict(body)


def sum_chunk(
    storage: JobStorage,
    document: JobDocument,
    last: StageRef,
    chunk: range,
    total: CardStats,
) -> int:
    """Add the markers of `chunk` into `total` (in place) and save the sum; returns the
    shard after the chunk."""
    job = document.job
    for marker in read_markers(storage, last.uri(job.output_uri), list(chunk)):
        if isinstance(marker, CorruptMarkerError):
            raise marker  # counted once, so readable then: a storage fault, not a bad marker
        if marker is not None and marker.card is None:
            total.uncounted += 1
        elif marker is not None:
            merge(total, CardStats.from_dict(marker.card or {}))
    body = json.dumps(total.to_dict(), sort_keys=True).encode("utf-8")
    storage.store.put_bytes(partial_uri(job.output_uri, last, chunk.stop), body)
    return chunk.stop
