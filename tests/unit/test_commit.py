"""The commit protocol on local storage: one winner per shard; nothing a marker lists is lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from palimpsest.commit import (
    OUTPUT_KIND,
    ConditionalPutError,
    ShardOutput,
    check_conditional_put,
    read_committed,
    read_marker,
)
from palimpsest.stats import Stats
from palimpsest.storage import LocalStore, StorageError

STORE = LocalStore()


def attempt(stage: str, name: str, ids: range) -> tuple[ShardOutput, Stats]:
    out = ShardOutput(STORE, stage, "filter-abc", 3, attempt=name)
    stats = Stats()
    for i in ids:
        out.write({"id": i})
        stats.keep()
    out.write_reject({"id": -1, "reject_reason": "empty_text"})
    stats.reject("empty_text")
    return out, stats


def test_first_commit_wins_and_the_loser_deletes_its_parts(tmp_path: Path) -> None:
    stage = str(tmp_path / "stage")
    first, first_stats = attempt(stage, "a1", range(5))
    second, second_stats = attempt(stage, "a2", range(5))
    assert first.commit(first_stats)
    assert not second.commit(second_stats)
    marker = read_marker(STORE, stage, 3)
    assert marker is not None and marker.attempt == "a1"
    assert [r.record["id"] for r in read_committed(STORE, marker) if r.record] == list(range(5))
    assert marker.stats.kept == 5 and marker.stats.rejects["empty_text"] == 1
    leftovers = [p for p in (tmp_path / "stage").rglob("*") if p.is_file() and "a2" in str(p)]
    assert leftovers == []


def test_an_aborted_attempt_keeps_only_its_closed_parts(tmp_path: Path) -> None:
    stage = str(tmp_path / "stage")
    out, _ = attempt(stage, "a1", range(3))
    closed = out.roll()
    out.write({"id": 99, "text": "open"})
    out.abort()
    assert read_marker(STORE, stage, 3) is None
    # A closed part may be listed by a checkpoint another attempt adopted: it stays.
    left = sorted(str(p) for p in (tmp_path / "stage").rglob("*") if p.is_file())
    assert left == sorted(p.uri for parts in closed.values() for p in parts)


def test_a_losing_attempt_keeps_the_parts_the_winner_adopted(tmp_path: Path) -> None:
    stage = str(tmp_path / "stage")
    stalled, _ = attempt(stage, "a1", range(3))
    adopted = stalled.roll()
    replacement, stats = attempt(stage, "a2", range(3, 5))
    assert replacement.commit(stats, adopted)
    stalled.write({"id": 7, "text": "late"})
    assert not stalled.commit(Stats())  # wakes up and loses
    marker = read_marker(STORE, stage, 3)
    assert marker is not None and marker.attempt == "a2"
    for parts in marker.parts.values():
        assert all(Path(p.uri).exists() for p in parts)
    ids = [r.record["id"] for r in read_committed(STORE, marker) if r.record]
    assert sorted(ids) == list(range(5))
    left = sorted(str(p) for p in Path(stage).rglob("part-*") if "/a1/" in str(p))
    assert left == sorted(p.uri for parts in adopted.values() for p in parts)  # "late" is gone


class LostResponseStore(LocalStore):
    """Puts land, but the answer to a put-if-absent is lost: raised, or a retry sees 412."""

    def __init__(self, outcome: str) -> None:
        self.outcome = outcome

    def put_bytes(self, uri: str, data: bytes, *, if_absent: bool = False) -> bool:
        landed = super().put_bytes(uri, data, if_absent=if_absent)
        if not (if_absent and landed and "_markers" in uri):
            return landed
        if self.outcome == "raise":
            raise StorageError(f"cannot write {uri}: read timeout")
        return False  # the retried PUT finds the object its first try wrote


@pytest.mark.parametrize("outcome", ["raise", "412"])
def test_an_ambiguous_marker_put_is_read_back(tmp_path: Path, outcome: str) -> None:
    store = LostResponseStore(outcome)
    stage = str(tmp_path / "stage")
    out = ShardOutput(store, stage, "s", 0, attempt="mine")
    out.write({"id": 1, "text": "x"})
    assert out.commit(Stats())  # our marker is there: committed, nothing deleted
    marker = read_marker(store, stage, 0)
    assert marker is not None and marker.attempt == "mine"
    assert all(Path(p.uri).exists() for p in marker.parts[OUTPUT_KIND])


def test_an_unknown_put_outcome_without_a_marker_raises_and_keeps_parts(tmp_path: Path) -> None:
    class Down(LocalStore):
        def put_bytes(self, uri: str, data: bytes, *, if_absent: bool = False) -> bool:
            if "_markers" in uri:
                raise StorageError(f"cannot write {uri}: connection reset")
            return super().put_bytes(uri, data, if_absent=if_absent)

    out = ShardOutput(Down(), str(tmp_path / "stage"), "s", 0, attempt="mine")
    out.write({"id": 1, "text": "x"})
    with pytest.raises(StorageError):
        out.commit(Stats())
    out.abort()
    assert len([p for p in (tmp_path / "stage").rglob("*") if p.is_file()]) == 1


def test_conditional_put_probe_stops_on_an_endpoint_that_ignores_it(tmp_path: Path) -> None:
    class IgnoresIfNoneMatch(LocalStore):
        def put_bytes(self, uri: str, data: bytes, *, if_absent: bool = False) -> bool:
            return super().put_bytes(uri, data)

    check_conditional_put(STORE, str(tmp_path))
    with pytest.raises(ConditionalPutError, match="ignores If-None-Match"):
        check_conditional_put(IgnoresIfNoneMatch(), str(tmp_path / "bad"))
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # the probe cleans up


def test_rolled_chunks_are_all_listed_in_the_marker(tmp_path: Path) -> None:
    stage = str(tmp_path / "stage")
    out = ShardOutput(STORE, stage, "s", 0, attempt="x")
    for chunk in range(3):
        for i in range(4):
            out.write({"id": chunk * 4 + i})
        out.roll()
    assert out.commit(Stats(records_in=12, kept=12))
    marker = read_marker(STORE, stage, 0)
    assert marker is not None
    assert [p.records for p in marker.parts["output"]] == [4, 4, 4]
    assert [r.record["id"] for r in read_committed(STORE, marker) if r.record] == list(range(12))


def test_a_corrupt_marker_is_a_storage_error_naming_it(tmp_path: Path) -> None:
    stage = str(tmp_path / "stage")
    out, stats = attempt(stage, "a1", range(2))
    assert out.commit(stats)
    marker = tmp_path / "stage" / "_markers" / "shard-000003.json"
    marker.write_text("{not json")
    with pytest.raises(StorageError, match=str(marker)):
        read_marker(STORE, stage, 3)


def test_a_missing_object_reads_as_none_and_an_unreadable_one_raises(tmp_path: Path) -> None:
    assert STORE.read_if_exists(str(tmp_path / "absent.json")) is None
    (tmp_path / "present.json").write_bytes(b"{}")
    assert STORE.read_if_exists(str(tmp_path / "present.json")) == b"{}"
    with pytest.raises(StorageError, match="cannot read"):
        STORE.read_if_exists(str(tmp_path))  # a folder: there, but not an object
