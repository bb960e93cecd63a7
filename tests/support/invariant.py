"""The invariant every fault test checks, read from storage through the markers only.

1. Every part any marker lists exists, with the record count the marker gives it.
2. Every input id ends exactly once: in the rejects of some stage, or in the last stage's
   output (a stage reads its predecessor's output, so the kept records of earlier stages are
   the input of later ones and are not counted again).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence

from palimpsest.commit import OUTPUT_KIND, REJECTS_KIND, read_committed, read_marker
from palimpsest.identity import StageRef
from palimpsest.storage import Store


class InvariantError(AssertionError):
    """What broke, with the stage, shard and part or id."""


def check_invariant(
    store: Store,
    output_uri: str,
    refs: Sequence[StageRef],
    shards: int,
    input_ids: Iterable[object],
    id_field: str = "id",
) -> None:
    """Raise InvariantError unless every stage of `refs` committed every shard, every part
    its markers list is readable with its listed count, and every id ends exactly once."""
    ended = ended_ids(store, output_uri, refs, shards, id_field)
    expected = Counter(repr(i) for i in input_ids)
    if ended != expected:
        missing = sorted((expected - ended).elements())
        extra = sorted((ended - expected).elements())
        raise InvariantError(f"ids lost: {missing[:10]}; ids more than once: {extra[:10]}")


def ended_ids(
    store: Store, output_uri: str, refs: Sequence[StageRef], shards: int, id_field: str = "id"
) -> Counter[str]:
    """How many times each id (as its repr) ends in a stage's rejects or the last stage's
    output; raise InvariantError where a marker or a part it lists is missing or short."""
    ended: Counter[str] = Counter()
    for position, ref in enumerate(refs):
        stage_uri = ref.uri(output_uri)
        last = position == len(refs) - 1
        for shard in range(shards):
            marker = read_marker(store, stage_uri, shard)
            if marker is None:
                raise InvariantError(f"{ref.kind} shard {shard}: no marker")
            for kind in (OUTPUT_KIND, REJECTS_KIND):
                for part in marker.parts.get(kind, []):
                    if not store.exists(part.uri):
                        raise InvariantError(f"{ref.kind} shard {shard}: listed {part.uri} missing")
                records = list(read_committed(store, marker, kind))
                listed = sum(p.records for p in marker.parts.get(kind, []))
                if len(records) != listed:
                    raise InvariantError(
                        f"{ref.kind} shard {shard} {kind}: {len(records)} records, marker {listed}"
                    )
                if kind == REJECTS_KIND or last:
                    for raw in records:
                        ended[repr(_id(raw.record or {}, id_field))] += 1
    return ended


def _id(record: dict[str, object], id_field: str) -> object:
    """The record's id; for the reject of an undecodable line, the id in its raw text."""
    if id_field in record or not isinstance(record.get("raw"), str):
        return record.get(id_field)
    try:
        value = json.loads(str(record["raw"]))
    except ValueError:
        return None
    return value.get(id_field) if isinstance(value, dict) else None
