"""Records of a finished (or running) job, read back for a person: before and after a stage.

`palimpsest inspect` and the report show what a stage did to records, not only counts. Like
every other reader this goes through markers only (never by listing parts), reads shards in
order and stops as soon as it has the records asked for, so looking at a few records of a
100,000-shard stage reads a few parts. A record's "before" is the record with the same key
(`recordfields.KEY_FIELD`) in the stage's input: the previous stage's committed output, or
the plan's raw shard for the first stage; keys never change between stages and a record stays
in its shard, so only that shard of the input is read.
"""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from palimpsest.commit import OUTPUT_KIND, REJECTS_KIND, read_committed, read_marker
from palimpsest.document import JobDocument, read_document
from palimpsest.identity import StageRef
from palimpsest.names import JOBS_DIR
from palimpsest.plan import ShardPlan
from palimpsest.recordfields import KEY_FIELD, REASON_FIELD
from palimpsest.recordkeys import canonical_id
from palimpsest.records import Record
from palimpsest.stagerun import shard_inputs
from palimpsest.storage import Store, join

READ_LIMIT = 50_000
"""Most records one sampling reads (a rare reject reason is looked for that far, no further)."""


class InspectError(ValueError):
    """Nothing to inspect where the user pointed (no job, no such stage); says what exists."""


@dataclass(frozen=True)
class Sample:
    """One record of a stage, with the same record as the stage read it."""

    stage: str
    shard: int
    key: str
    after: Record
    before: Record | None
    rejected: bool

    @property
    def reason(self) -> str | None:
        value = self.after.get(REASON_FIELD)
        return str(value) if value is not None else None


@dataclass(frozen=True)
class JobView:
    """A job's document and plan, as read back from its output."""

    document: JobDocument
    plan: ShardPlan
    output_uri: str

    @property
    def refs(self) -> tuple[StageRef, ...]:
        return self.document.stage_refs()

    @property
    def text_field(self) -> str:
        return self.document.job.input.text_field

    def ref(self, kind: str) -> StageRef:
        for ref in self.refs:
            if ref.kind == kind:
                return ref
        known = ", ".join(r.kind for r in self.refs)
        raise InspectError(f"--stage {kind}: not a stage of this job (its stages: {known})")


def open_job(store: Store, output_uri: str) -> JobView:
    """The job that wrote `output_uri`: the one its summary.json names, else the newest job
    document there."""
    documents = [info.uri for info in _list(store, join(output_uri, JOBS_DIR))]
    if not documents:
        raise InspectError(
            f"{output_uri}: no job here (no {JOBS_DIR}/); give the output URI of a "
            "`palimpsest run` or a RewriteJob"
        )
    chosen = [read_document(store, uri) for uri in documents]
    wanted = _summary_plan_id(store, output_uri)
    matching = [d for d in chosen if d.plan_id == wanted] or chosen
    document = matching[-1]
    plan = ShardPlan.from_json(store.read_bytes(document.plan_uri))
    return JobView(document, plan, output_uri)


def _list(store: Store, prefix: str) -> list[Any]:
    from palimpsest.storage import StorageError

    try:
        return [i for i in store.list(prefix) if i.uri.endswith(".json")]
    except StorageError:
        return []


def _summary_plan_id(store: Store, output_uri: str) -> str | None:
    from palimpsest.report import SUMMARY_NAME

    uri = join(output_uri, SUMMARY_NAME)
    if not store.exists(uri):
        return None
    value = json.loads(store.read_bytes(uri)).get("plan_id")
    return str(value) if value is not None else None


def stage_records(
    store: Store,
    view: JobView,
    ref: StageRef,
    kind: str = OUTPUT_KIND,
    shards: Sequence[int] | None = None,
) -> Iterator[tuple[int, Record]]:
    """(shard, record) of a stage's committed outputs or rejects, shard by shard."""
    for shard in range(len(view.plan.shards)) if shards is None else shards:
        marker = read_marker(store, ref.uri(view.output_uri), shard)
        if marker is None:
            continue
        for raw in read_committed(store, marker, kind):
            if raw.record is not None:
                yield shard, raw.record


def inputs_by_key(store: Store, view: JobView, ref: StageRef, shard: int) -> dict[str, Record]:
    """The stage's input records of one shard, by key."""
    read = shard_inputs(
        store, view.plan, view.output_uri, ref.previous, view.document.job.input.id_field
    )
    found: dict[str, Record] = {}
    for raw in read(shard):
        if raw.record is not None and isinstance(raw.record.get(KEY_FIELD), str):
            found[raw.record[KEY_FIELD]] = raw.record
    return found


def samples(
    store: Store,
    view: JobView,
    kind: str,
    *,
    rejects: bool = False,
    reason: str | None = None,
    limit: int = 5,
) -> list[Sample]:
    """The first `limit` records of a stage (or of its rejects, with that reason), each with
    its record before the stage."""
    ref = view.ref(kind)
    picked: list[tuple[int, Record]] = []
    part = REJECTS_KIND if rejects or reason else OUTPUT_KIND
    for shard, record in stage_records(store, view, ref, part):
        if reason is None or record.get(REASON_FIELD) == reason:
            picked.append((shard, record))
            if len(picked) >= limit:
                break
    return _with_inputs(store, view, ref, picked, rejected=part == REJECTS_KIND)


def _with_inputs(
    store: Store, view: JobView, ref: StageRef, picked: Sequence[tuple[int, Record]], rejected: bool
) -> list[Sample]:
    inputs: dict[int, dict[str, Record]] = {}
    out = []
    for shard, record in picked:
        if shard not in inputs:
            inputs[shard] = inputs_by_key(store, view, ref, shard)
        key = str(record.get(KEY_FIELD))
        out.append(Sample(ref.kind, shard, key, record, inputs[shard].get(key), rejected))
    return out


def key_candidates(record_id: str) -> set[str]:
    """The keys an id typed on the command line may stand for: the id as a string, as the JSON
    value it spells (`17` -> `17` and `"17"`), or a key as printed (`@file:3`)."""
    keys = {canonical_id(record_id), record_id}
    with contextlib.suppress(json.JSONDecodeError):
        keys.add(canonical_id(json.loads(record_id)))
    return keys


def follow(store: Store, view: JobView, record_id: str) -> list[Sample]:
    """One record through every stage, until a stage rejected it (or never saw it)."""
    keys = key_candidates(record_id)
    trail: list[Sample] = []
    shards: Sequence[int] = range(len(view.plan.shards))
    for ref in view.refs:
        found = _find(store, view, ref, keys, shards)
        if found is None:
            break
        trail.append(found)
        shards = [found.shard]  # a record stays in its shard through every stage
        if found.rejected:
            break
    if not trail:
        raise InspectError(f"--id {record_id}: no record with this id in any committed stage")
    return trail


def _find(
    store: Store, view: JobView, ref: StageRef, keys: set[str], shards: Sequence[int]
) -> Sample | None:
    for part in (OUTPUT_KIND, REJECTS_KIND):
        for shard, record in stage_records(store, view, ref, part, shards):
            if record.get(KEY_FIELD) in keys:
                return _with_inputs(store, view, ref, [(shard, record)], part == REJECTS_KIND)[0]
    return None


def seeded_samples(
    store: Store,
    view: JobView,
    kind: str,
    n: int,
    *,
    seed: int = 0,
    reason: str | None = None,
    scan: int = 2_000,
) -> list[Sample]:
    """`n` records of a stage (or its rejects with `reason`) chosen at random with `seed`
    among the first `scan` it committed (looking at no more than READ_LIMIT records): the same
    choice on every report of the same output, and a bounded read however large the stage is."""
    rng = random.Random(f"{seed}:{kind}:{reason}")
    part = OUTPUT_KIND if reason is None else REJECTS_KIND
    chosen: list[tuple[int, Record]] = []
    seen = 0
    for read, (shard, record) in enumerate(stage_records(store, view, view.ref(kind), part)):
        if read >= READ_LIMIT:
            break
        if reason is not None and record.get(REASON_FIELD) != reason:
            continue
        seen += 1
        if len(chosen) < n:
            chosen.append((shard, record))
        else:  # reservoir sampling: every record seen so far is kept with chance n/seen
            slot = rng.randrange(seen)
            if slot < n:
                chosen[slot] = (shard, record)
        if seen >= scan:
            break
    chosen.sort(key=lambda item: (item[0], str(item[1].get(KEY_FIELD))))
    return _with_inputs(store, view, view.ref(kind), chosen, rejected=reason is not None)
