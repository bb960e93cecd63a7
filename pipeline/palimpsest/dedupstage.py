"""The dedup stage of a RewriteJob: the four steps of `palimpsest.dedup`, each exactly-once.

Dedup needs every record's signature before any record can be judged, so unlike the other
stages it is not one pass per shard but four steps, run in order, each over its own units
(what one index of its Indexed Job does):

- signatures: one unit per plan shard; reads the shard's input records; writes, per column
  range, the range's column values, and the raw MinHash rows and the sort keys;
- buckets: one unit per column range; reads its range's columns of every shard and the
  MinHash rows of its candidates; writes the confirmed pairs;
- clusters: one unit; reads every range's pairs and the sort keys of the records in them;
  writes per shard the duplicate rows and their kept record's key;
- filter: one unit per plan shard; reads the shard's input and its duplicates; writes the
  stage's outputs and rejects.

Every unit commits like a shard of any stage (`commit`): its files go under keys unique to
the attempt, and a conditional marker lists them; the next step reads through markers only,
so a lost, repeated or zombie attempt never counts twice. A step's markers live under the
stage's folder (`<stage>/_steps/<step>/_markers/shard-<unit>.json`); the filter step's are the
stage's own, so the next stage, the status and the manifest read dedup like any stage.

A bucket pod loads only its range's columns of each shard's signatures (16 bytes per record
and column: the value and the row) and then only the MinHash rows of its candidates, by
range reads of the raw MinHash files; the cluster pod loads only the sort keys of records
that are in some pair. `palimpsest run` runs the same steps in-process, unit by unit.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Final

import numpy as np

from palimpsest.commit import Marker, Part, new_attempt_id, publish_marker, read_marker
from palimpsest.dedup import (
    ID_SHIFT,
    ROW_MASK,
    ColumnValues,
    column_entries,
    edges_of_columns,
    find_clusters,
    row_verdict,
    shard_signatures,
)
from palimpsest.dedupsteps import (
    BUCKETS,
    CLUSTERS,
    FILTER,
    SIGNATURES,
    STEPS,
    step_ref,
    step_units,
)
from palimpsest.identity import StageRef
from palimpsest.records import Fields, RawRecord
from palimpsest.rewrite.runner import MissingInputError
from palimpsest.stagerun import ShardResult, run_records_shard, shard_inputs
from palimpsest.stages.decontam import NUM_PERM
from palimpsest.stages.verdicts import Verdict, VerdictStage
from palimpsest.stats import Stats
from palimpsest.storage import Store, join

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from palimpsest.document import JobDocument
    from palimpsest.plan import ShardPlan

log = logging.getLogger(__name__)

COLUMNS_KIND: Final = "columns"
MINHASH_KIND: Final = "minhash"
ORDER_KIND: Final = "order"
EDGES_KIND: Final = "edges"
_ROW_BYTES: Final = NUM_PERM * 4
_GAP_ROWS: Final = 64
"""Candidate rows closer than this are fetched by one range read (fewer requests, a little
more data)."""


def run_step(
    store: Store, document: JobDocument, plan: ShardPlan, ref: StageRef, step: str, unit: int
) -> ShardResult:
    """Run one unit of one step of the dedup stage `ref`; a committed unit returns at once.
    Raises MissingInputError when the step before has not committed everything it reads."""
    units = step_units(step, len(plan.shards), document.job.dedup)
    if not 0 <= unit < units:
        raise IndexError(f"{step} unit {unit} outside 0..{units - 1}")
    if step == FILTER:
        return _filter(store, document, plan, ref, unit)
    own = step_ref(ref, step)
    uri = own.uri(document.job.output_uri)
    existing = read_marker(store, uri, unit)
    if existing is not None:
        return ShardResult(unit, False, True, existing.stats)
    work = {SIGNATURES: _signatures, BUCKETS: _buckets, CLUSTERS: _clusters}[step]
    files, stats = work(store, document, plan, ref, unit)
    committed = commit_files(store, uri, own.stage_id, unit, files, stats)
    return ShardResult(unit, committed, not committed, stats)


def run_all_steps(store: Store, document: JobDocument, plan: ShardPlan, ref: StageRef) -> None:
    """Every unit of every step, in order, in this process (`palimpsest run`)."""
    for step in STEPS:
        for unit in range(step_units(step, len(plan.shards), document.job.dedup)):
            run_step(store, document, plan, ref, step, unit)


Files = dict[str, list[tuple[str, bytes, int]]]
"""Per marker kind, the files of a unit: (name, content, records it holds)."""


def commit_files(
    store: Store, step_uri: str, step_id: str, unit: int, files: Files, stats: Stats
) -> bool:
    """Write a unit's files under this attempt's keys and commit them by the unit's marker;
    False when another attempt won (then this attempt's files are deleted)."""
    attempt = new_attempt_id()
    parts: dict[str, list[Part]] = {}
    for kind, named in files.items():
        for name, data, records in named:
            uri = join(step_uri, f"shard-{unit:06d}", attempt, name)
            store.put_bytes(uri, data)
            parts.setdefault(kind, []).append(Part(uri, records, len(data)))
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    winner = publish_marker(store, Marker(unit, attempt, step_id, parts, stats, now), step_uri)
    if winner.attempt == attempt:
        return True
    log.warning("unit %d of %s was committed by another attempt", unit, step_id)
    listed = {p.uri for kind_parts in winner.parts.values() for p in kind_parts}
    for part in (p for kind_parts in parts.values() for p in kind_parts):
        if part.uri not in listed:
            store.delete(part.uri)
    return False


def _markers(
    store: Store, document: JobDocument, ref: StageRef, step: str, units: int
) -> list[Marker]:
    """Every unit's marker of a finished step; MissingInputError names the first missing."""
    uri = step_ref(ref, step).uri(document.job.output_uri)
    markers = []
    for unit in range(units):
        marker = read_marker(store, uri, unit)
        if marker is None:
            raise MissingInputError(f"dedup step {step} has not committed unit {unit}")
        markers.append(marker)
    return markers


# --- signatures -----------------------------------------------------------------------------


def _signatures(
    store: Store, document: JobDocument, plan: ShardPlan, ref: StageRef, shard: int
) -> tuple[Files, Stats]:
    job = document.job
    items = shard_inputs(store, plan, job.output_uri, ref.previous, job.input.id_field)(shard)
    signatures = shard_signatures(shard, items, job.input.fields)
    rows = len(signatures.order)
    columns = []
    for number, columns_of_range in enumerate(job.dedup.ranges()):
        arrays: dict[str, NDArray[np.uint64]] = {}
        for column in columns_of_range:
            _, values, ids = column_entries(signatures, column)
            arrays[f"values-{column}"], arrays[f"ids-{column}"] = values, ids
        columns.append((f"columns-{number:03d}.npz", _npz(arrays), rows))
    minhash = np.ascontiguousarray(signatures.minhash, dtype="<u4").tobytes()
    order = json.dumps(signatures.order).encode("utf-8")
    files = {
        COLUMNS_KIND: columns,
        MINHASH_KIND: [("minhash.u32", minhash, rows)],
        ORDER_KIND: [("order.json", order, rows)],
    }
    return files, Stats(records_in=rows)


def _npz(arrays: Mapping[str, NDArray[np.uint64]]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


# --- buckets --------------------------------------------------------------------------------


def _buckets(
    store: Store, document: JobDocument, plan: ShardPlan, ref: StageRef, number: int
) -> tuple[Files, Stats]:
    settings = document.job.dedup
    signatures = _markers(store, document, ref, SIGNATURES, len(plan.shards))
    columns = settings.ranges()[number]
    values: dict[int, list[NDArray[np.uint64]]] = {c: [] for c in columns}
    ids: dict[int, list[NDArray[np.uint64]]] = {c: [] for c in columns}
    for marker in signatures:
        part = marker.parts[COLUMNS_KIND][number]
        with np.load(io.BytesIO(store.read_bytes(part.uri))) as data:
            for column in columns:
                values[column].append(data[f"values-{column}"])
                ids[column].append(data[f"ids-{column}"])
    entries: list[ColumnValues] = [
        (c, np.concatenate(values.pop(c)), np.concatenate(ids.pop(c))) for c in columns
    ]
    minhash_files = {m.shard: m.parts[MINHASH_KIND][0].uri for m in signatures}
    edges = edges_of_columns(entries, minhash_reader(store, minhash_files), settings.threshold)
    buffer = io.BytesIO()
    np.save(buffer, edges)
    return {EDGES_KIND: [("edges.npy", buffer.getvalue(), len(edges))]}, Stats()


def minhash_reader(
    store: Store, files: Mapping[int, str]
) -> Callable[[Sequence[int]], dict[int, NDArray[np.uint32]]]:
    """Global ids -> their MinHash rows, read from each shard's raw MinHash file by range
    reads of runs of nearby rows (`files`: shard -> the file)."""

    def read(items: Sequence[int]) -> dict[int, NDArray[np.uint32]]:
        found: dict[int, NDArray[np.uint32]] = {}
        by_shard: dict[int, list[int]] = {}
        for item in sorted(items):
            by_shard.setdefault(item >> ID_SHIFT, []).append(item & ROW_MASK)
        for shard, rows in by_shard.items():
            for first, last in _runs(rows):
                with store.open_range(
                    files[shard], first * _ROW_BYTES, (last + 1) * _ROW_BYTES
                ) as body:
                    block = np.frombuffer(body.read(), dtype="<u4").reshape(-1, NUM_PERM)
                for row in (r for r in rows if first <= r <= last):
                    found[(shard << ID_SHIFT) | row] = block[row - first]
        return found

    return read


def _runs(rows: Sequence[int]) -> Iterable[tuple[int, int]]:
    """Sorted rows as (first, last) runs, rows closer than _GAP_ROWS joined."""
    first = last = rows[0]
    for row in rows[1:]:
        if row - last > _GAP_ROWS:
            yield first, last
            first = row
        last = row
    yield first, last


# --- clusters -------------------------------------------------------------------------------


def _clusters(
    store: Store, document: JobDocument, plan: ShardPlan, ref: StageRef, unit: int
) -> tuple[Files, Stats]:
    ranges = len(document.job.dedup.ranges())
    edges = [
        np.load(io.BytesIO(store.read_bytes(m.parts[EDGES_KIND][0].uri)))
        for m in _markers(store, document, ref, BUCKETS, ranges)
    ]
    wanted: dict[int, set[int]] = {}
    for pairs in edges:
        for item in np.unique(pairs).tolist():
            wanted.setdefault(item >> ID_SHIFT, set()).add(item & ROW_MASK)
    keys: dict[int, str] = {}
    if wanted:
        signatures = _markers(store, document, ref, SIGNATURES, len(plan.shards))
        for shard, rows in wanted.items():
            order = json.loads(store.read_bytes(signatures[shard].parts[ORDER_KIND][0].uri))
            keys.update({(shard << ID_SHIFT) | row: order[row] for row in rows})
    duplicates = find_clusters(edges, keys.__getitem__)
    files = {
        shard_kind(shard): [(f"{shard_kind(shard)}.json", _duplicates_json(rows), len(rows))]
        for shard, rows in sorted(duplicates.items())
    }
    return files, Stats()


def shard_kind(shard: int) -> str:
    """The marker kind under which the cluster step lists one shard's duplicates."""
    return f"shard-{shard:06d}"


def _duplicates_json(rows: Mapping[int, str]) -> bytes:
    return json.dumps({str(row): kept for row, kept in sorted(rows.items())}).encode("utf-8")


# --- filter ---------------------------------------------------------------------------------


class DedupFilter(VerdictStage):
    """The filter step over one shard (built per shard, its items in the order the
    signatures step read them): each item kept, or rejected as `duplicate` (naming the kept
    record) or for an unusable text."""

    def __init__(self, duplicates: Mapping[int, str], fields: Fields) -> None:
        self.duplicates = duplicates
        self.fields = fields
        self.row = 0

    def verdict(self, raw: RawRecord) -> Verdict:
        row, self.row = self.row, self.row + 1
        return row_verdict(row, raw, self.duplicates, self.fields)


def _filter(
    store: Store, document: JobDocument, plan: ShardPlan, ref: StageRef, shard: int
) -> ShardResult:
    output_uri = document.job.output_uri
    done = read_marker(store, ref.uri(output_uri), shard)
    if done is not None:
        return ShardResult(shard, False, True, done.stats)
    (clusters,) = _markers(store, document, ref, CLUSTERS, 1)
    duplicates: dict[int, str] = {}
    for part in clusters.parts.get(shard_kind(shard), []):
        duplicates = {int(r): k for r, k in json.loads(store.read_bytes(part.uri)).items()}
    stage = DedupFilter(duplicates, document.job.input.fields)
    return run_records_shard(store, document, plan, ref, stage, shard)
