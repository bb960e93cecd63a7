"""Record keys and checkpoint resume as properties: any ids, any interleaving of attempts."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from palimpsest.commit import OUTPUT_KIND, Part
from palimpsest.recordfields import KEY_FIELD
from palimpsest.recordkeys import assign_keys, record_key
from palimpsest.records import RawRecord
from palimpsest.rewrite.checkpoint import Checkpoint, resume
from palimpsest.stats import Stats

MISSING = object()
json_ids = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(alphabet="x#1@:\"'", max_size=4),
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=2), inner),
    max_leaves=4,
)
ids = st.lists(st.one_of(json_ids, st.just(MISSING)), max_size=30)


def items(values: list[Any]) -> list[RawRecord]:
    out = []
    for position, value in enumerate(values):
        record = {"text": "t"} if value is MISSING else {"id": value, "text": "t"}
        out.append(RawRecord("obj", position, record))
    return out


@given(ids)
def test_keys_are_unique_and_stable_across_stages(values: list[Any]) -> None:
    first = [record_key(r, "id") for r in assign_keys(items(values), "id")]
    assert len(set(first)) == len(first)
    assert first == [record_key(r, "id") for r in assign_keys(items(values), "id")]
    # A later stage reads the records from other objects at other positions: same keys.
    moved = [
        RawRecord("stage-part", 1000 + i, json.loads(json.dumps(r.record)))
        for i, r in enumerate(assign_keys(items(values), "id"))
    ]
    assert [record_key(r, "id") for r in moved] == first
    assert all(KEY_FIELD in r.record for r in moved if r.record is not None)


@settings(max_examples=200)
@given(
    st.integers(min_value=1, max_value=25),
    st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 24), st.integers(1, 6)),
        max_size=12,
    ),
)
def test_resume_takes_every_key_at_most_once(
    total: int, chunks: list[tuple[int, int, int]]
) -> None:
    """Chunks from up to four attempts, each a run of keys starting anywhere (attempts that
    ran at once overlap): what resume takes plus what is left to do covers every key once."""
    keys = [f"k{i}" for i in range(total)]
    checkpoints = []
    for seq, (attempt, start, size) in enumerate(chunks):
        chunk = keys[start % total : start % total + size]
        part = Part(f"/p/{attempt}-{seq}", len(chunk), 1)
        checkpoints.append(
            Checkpoint(
                "s", 0, f"a{attempt}", seq, {OUTPUT_KIND: [part]}, {OUTPUT_KIND: [chunk]}, Stats()
            )
        )
    checkpoints.sort(key=lambda c: f"{c.attempt}-{c.seq:06d}")  # name order, as listed
    state = resume(checkpoints)
    taken = [k for p, part_keys in state.output_parts for k in part_keys]
    assert len(taken) == len(set(taken))  # no key from two checkpoints
    assert set(taken) == set(state.done)
    assert sum(p.records for p in state.parts.get(OUTPUT_KIND, [])) == len(taken)
    todo = [k for k in keys if k not in state.done]
    assert sorted(taken + todo) == sorted(keys)
