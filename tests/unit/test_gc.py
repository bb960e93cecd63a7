"""`palimpsest gc`: only parts no committed marker lists, and checkpoints of committed shards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from palimpsest.cli import main
from palimpsest.commit import OUTPUT_KIND, ShardOutput, read_committed, read_marker
from palimpsest.gc import find_garbage
from palimpsest.stats import Stats
from palimpsest.storage import LocalStore

STORE = LocalStore()


def shard(stage: str, index: int, attempt: str, ids: range) -> ShardOutput:
    out = ShardOutput(STORE, stage, "s", index, attempt=attempt)
    for i in ids:
        out.write({"id": i})
    return out


def test_gc_finds_only_unlisted_parts_of_committed_shards(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stage = str(tmp_path / "out" / "filter-abc")
    adopted = shard(stage, 0, "zombie", range(2)).roll()
    loser = shard(stage, 0, "zombie2", range(2, 3))
    loser.roll()  # closed, then the attempt died: listed nowhere
    winner = shard(stage, 0, "winner", range(2, 4))
    assert winner.commit(Stats(), adopted)
    running = shard(stage, 1, "running", range(9, 10))
    running.roll()  # shard 1 is not committed: its parts may still be adopted
    checkpoint = Path(stage) / "_checkpoints" / "shard-000000" / "winner-000000.json"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_text("{}")

    garbage = find_garbage(STORE, str(tmp_path / "out"))
    found = sorted(Path(o.uri).relative_to(stage).as_posix() for o in garbage.objects["filter-abc"])
    assert found == [
        "_checkpoints/shard-000000/winner-000000.json",
        "output/shard-000000/zombie2/part-00000.jsonl.zst",
    ]

    assert main(["gc", str(tmp_path / "out")]) == 0  # a dry run deletes nothing
    assert json.loads(capsys.readouterr().out)["objects"] == 2
    assert (Path(stage) / found[1]).exists()
    assert main(["gc", str(tmp_path / "out"), "--delete"]) == 0
    assert not (Path(stage) / found[1]).exists()
    marker = read_marker(STORE, stage, 0)
    assert marker is not None
    assert sorted(r.record["id"] for r in read_committed(STORE, marker) if r.record) == [0, 1, 2, 3]
    assert find_garbage(STORE, str(tmp_path / "out")).count == 0
    assert list((Path(stage) / OUTPUT_KIND / "shard-000001").rglob("part-*"))
