"""Shard plans: deterministic, and covering the input exactly once."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from palimpsest.plan import PlanSettings, ShardPlan, make_plan
from palimpsest.storage import LocalStore

STORE = LocalStore()


def make_input(root: Path) -> int:
    """Two big JSONL files, small ones, a gzip file and a Parquet file; returns the record count."""
    root.mkdir()
    n = 0
    for name, count in (("a.jsonl", 3000), ("b.jsonl", 1200), ("c.jsonl", 7), ("d.jsonl", 3)):
        with open(root / name, "w") as handle:
            for _ in range(count):
                handle.write(json.dumps({"id": f"r{n}", "text": "x" * (n % 97)}) + "\n")
                n += 1
    with gzip.open(root / "e.jsonl.gz", "wt") as handle:
        for _ in range(900):
            handle.write(json.dumps({"id": f"r{n}", "text": "y"}) + "\n")
            n += 1
    table = pa.Table.from_pylist([{"id": f"r{n + i}", "text": "z"} for i in range(1000)])
    pq.write_table(table, root / "f.parquet", row_group_size=100)
    n += 1000
    (root / "_SUCCESS").write_text("")
    (root / "notes.txt").write_text("not data")
    return n


def read_ids(plan: ShardPlan) -> list[str]:
    return [raw.record["id"] for shard in plan.shards for raw in shard.read(STORE) if raw.record]


def test_plan_covers_every_record_exactly_once(tmp_path: Path) -> None:
    total = make_input(tmp_path / "in")
    plan = make_plan(STORE, str(tmp_path / "in"), PlanSettings(records_per_shard=500))
    ids = read_ids(plan)
    assert len(ids) == total
    assert len(set(ids)) == total
    assert len(plan.shards) >= 10
    assert plan.skipped == (str(tmp_path / "in" / "notes.txt"),)
    assert [s.index for s in plan.shards] == list(range(len(plan.shards)))


def test_plan_is_deterministic_and_survives_a_round_trip(tmp_path: Path) -> None:
    make_input(tmp_path / "in")
    settings = PlanSettings(records_per_shard=400)
    first = make_plan(STORE, str(tmp_path / "in"), settings)
    second = make_plan(STORE, str(tmp_path / "in"), settings)
    assert first.to_json() == second.to_json()
    assert ShardPlan.from_json(first.to_json()) == first
    other = make_plan(STORE, str(tmp_path / "in"), PlanSettings(records_per_shard=401))
    assert other.plan_id != first.plan_id


def test_compressed_objects_stay_whole_and_parquet_splits_at_row_groups(tmp_path: Path) -> None:
    make_input(tmp_path / "in")
    plan = make_plan(STORE, str(tmp_path / "in"), PlanSettings(records_per_shard=250))
    pieces = [p for s in plan.shards for p in s.pieces]
    gz = [p for p in pieces if p.uri.endswith(".gz")]
    assert len(gz) == 1 and gz[0].start == 0 and gz[0].end is None
    groups = [p.row_groups for p in pieces if p.format == "parquet"]
    assert sorted(g for gs in groups if gs for g in gs) == list(range(10))
    assert all(gs is not None and len(gs) <= 3 for gs in groups)


def test_bytes_per_shard_and_bad_settings(tmp_path: Path) -> None:
    make_input(tmp_path / "in")
    plan = make_plan(
        STORE, str(tmp_path / "in"), PlanSettings(records_per_shard=None, bytes_per_shard=20_000)
    )
    assert len(read_ids(plan)) == len(set(read_ids(plan)))
    with pytest.raises(ValueError, match="recordsPerShard"):
        PlanSettings(records_per_shard=0)
    with pytest.raises(ValueError, match="exactly one"):
        PlanSettings(records_per_shard=5, bytes_per_shard=5)


def test_empty_input_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match=r"no \.jsonl"):
        make_plan(STORE, str(tmp_path / "in"), PlanSettings())
