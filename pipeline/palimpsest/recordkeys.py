"""Stable record keys: one name per input record, the same in every stage and every attempt.

Checkpoints list the keys of the records they hold, and a resuming attempt skips those keys,
so a key must never change between stages or attempts, and two records of a shard must never
share one. The key is the canonical JSON of the record's id (any JSON type: a string, a
number, null, a list), or `@<object>:<position>` of the raw input when the record has no id
field; a repeated key gets `#<n>` for its n-th repetition. Canonical JSON of a string ends in
a quote and never contains a bare `#`, so a suffixed key cannot equal another record's key.

Keys are assigned when the raw shard is read (`assign_keys`) and stored in the reserved field
`recordfields.KEY_FIELD`, which every stage carries through; later stages read it back.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

from palimpsest.recordfields import KEY_FIELD
from palimpsest.records import RawRecord


def canonical_id(value: object) -> str:
    """The key of a record whose id is `value`: its canonical JSON."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def natural_key(raw: RawRecord, id_field: str) -> str:
    """The key before de-duplication: the id's canonical JSON, else where the item came from."""
    if raw.record is not None and id_field in raw.record:
        return canonical_id(raw.record[id_field])
    return f"@{raw.source}:{raw.position}"


def assign_keys(items: Iterable[RawRecord], id_field: str) -> Iterator[RawRecord]:
    """The raw shard's items, each decoded record given its unique key in KEY_FIELD."""
    seen: dict[str, int] = {}
    for raw in items:
        base = natural_key(raw, id_field)
        count = seen.get(base, 0)
        seen[base] = count + 1
        if raw.record is not None:
            raw.record[KEY_FIELD] = base if count == 0 else f"{base}#{count}"
        yield raw


def record_key(raw: RawRecord, id_field: str) -> str:
    """The key `assign_keys` gave the record, carried in KEY_FIELD; for an item that is not a
    record (an undecodable line, only ever in a raw shard) its natural key."""
    if raw.record is not None:
        key = raw.record.get(KEY_FIELD)
        if isinstance(key, str):
            return key
    return natural_key(raw, id_field)
