"""Counting markers: the checkpoint round-trips, stays small, and never double-counts."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from palimpsest.commit import Marker, ShardOutput
from palimpsest.stats import Stats
from palimpsest.storage import LocalStore
from palimpsest_operator.progress import (
    LIST_PAGE,
    Tally,
    advance,
    count_indexes,
    parse_indexes,
    shards_of_indexes,
)
from palimpsest_operator.storage import JobStorage


def commit_shard(
    stage_uri: str, shard: int, kept: int = 2, rejected: int = 1, generated: int = 0
) -> None:
    out = ShardOutput(LocalStore(), stage_uri, "stage-x", shard)
    stats = Stats()
    for i in range(kept):
        out.write({"id": f"{shard}-{i}", "text": "x"})
        stats.keep()
    for _ in range(rejected):
        stats.reject("syntax_error")
    stats.generated_tokens = generated
    stats.engine_seconds, stats.gpus = 10.0, 2
    assert out.commit(stats)


@pytest.mark.parametrize(
    ("text", "indexes"),
    [(None, []), ("", []), ("3", [3]), ("0-2,5", [0, 1, 2, 5]), ("1,3-4,9-9", [1, 3, 4, 9])],
)
def test_index_ranges(text: str | None, indexes: list[int]) -> None:
    assert parse_indexes(text) == indexes
    assert count_indexes(text) == len(indexes)


def test_shards_of_index_blocks() -> None:
    assert shards_of_indexes([0, 2], block=3, total=8) == [0, 1, 2, 6, 7]
    # a retry Job's indexes count through its shard list
    assert shards_of_indexes([1, 2], block=2, total=8, order=[1, 4, 5, 7, 6]) == [5, 7, 6]


def test_tally_round_trip_and_size() -> None:
    tally = Tally.empty(100_000)
    stats = Stats(records_in=5, kept=4)
    for shard in range(0, 100_000, 2):
        tally.add(Marker(shard, "a", "s", {}, stats, "t"))
    encoded = tally.encode()
    assert len(json.dumps(encoded)) < 4000
    again = Tally.decode(json.loads(json.dumps(encoded)), 100_000)
    assert again.count == 50_000 and again.stats.kept == 200_000
    assert again.has(2) and not again.has(3)
    assert again.missing(range(6)) == [1, 3, 5]
    # a checkpoint of another plan (other shard count) is not trusted
    assert Tally.decode(encoded, 99_999).count == 0
    assert len(base64.b64decode(encoded["done"])) < 1000


def test_advance_counts_each_marker_once(tmp_path: Path) -> None:
    stage = str(tmp_path / "stage-x")
    for shard in (0, 1, 3):
        commit_shard(stage, shard, generated=10)
    storage = JobStorage(LocalStore())
    tally = Tally.empty(5)
    assert advance(tally, storage, stage, candidates=[0, 1], scan=False) == 2
    assert advance(tally, storage, stage, candidates=[0, 1, 2], scan=False) == 0  # 2 not committed
    assert advance(tally, storage, stage, candidates=[], scan=True) == 1  # the listing finds 3
    assert tally.count == 3 and tally.stats.kept == 6 and tally.stats.rejects["syntax_error"] == 3
    assert tally.stats.generated_tokens == 30
    assert tally.gpu_seconds == pytest.approx(60.0)
    # a restart from the checkpoint reads again and counts nothing twice
    restored = Tally.decode(tally.encode(), 5)
    assert advance(restored, storage, stage, candidates=[0, 1, 3], scan=True) == 0
    assert restored.stats.kept == 6


def test_listing_cursor_walks_and_wraps(tmp_path: Path) -> None:
    stage = str(tmp_path / "stage-y")
    storage = JobStorage(LocalStore())
    assert storage.list_marker_shards(stage, -1, 10) == []
    for shard in range(4):
        commit_shard(stage, shard)
    assert storage.list_marker_shards(stage, -1, 10) == [0, 1, 2, 3]
    assert storage.list_marker_shards(stage, 1, 10) == [2, 3]
    assert storage.list_marker_shards(stage, 1, 1) == [2]
    tally = Tally.empty(6)
    advance(tally, storage, stage, candidates=[], scan=True)
    assert tally.count == 4 and tally.cursor == -1  # short page: cursor wraps
    assert LIST_PAGE >= 100


def test_tick_benchmark_runs_and_counts_everything(tmp_path: Path) -> None:
    from palimpsest_operator.bench import run

    report = run(str(tmp_path / "out"), shards=300, new=20, parts=3)
    assert report["phase"] == "Succeeded" and report["manifest_ticks"] >= 1
    assert report["counted_after_steady_tick"] == 280
    assert report["rebuild_ticks"] <= 1  # the first tick lists and counts them already
    assert report["status_bytes"] < 5000
