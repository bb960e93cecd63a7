"""The commit protocol on local storage: one winner per shard, losers leave nothing."""

from __future__ import annotations

from pathlib import Path

from palimpsest.commit import ShardOutput, read_committed, read_marker
from palimpsest.stats import Stats
from palimpsest.storage import LocalStore

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


def test_an_aborted_attempt_leaves_no_marker_and_no_parts(tmp_path: Path) -> None:
    stage = str(tmp_path / "stage")
    out, _ = attempt(stage, "a1", range(3))
    out.roll()
    out.abort()
    assert read_marker(STORE, stage, 3) is None
    assert [p for p in (tmp_path / "stage").rglob("*") if p.is_file()] == []


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
