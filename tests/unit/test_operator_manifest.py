"""The dataset manifest streamed over ticks: bounded work per tick, every part listed once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from palimpsest.commit import Marker, Part, marker_uri
from palimpsest.identity import StageRef
from palimpsest.stats import Stats
from palimpsest.storage import LocalStore
from palimpsest_operator import manifest
from palimpsest_operator.manifest import ManifestProgress, write_manifest_step
from palimpsest_operator.storage import JobStorage

LAST = StageRef("scor", "scor-0123456789ab", "sgcr-0123456789ab")
PARTS_PER_SHARD = 4


def commit_shards(output: str, shards: int) -> None:
    store = LocalStore()
    for shard in range(shards):
        parts = [Part(f"{output}/p/{shard}-{i}.jsonl.zst", 10, 100) for i in range(PARTS_PER_SHARD)]
        marker = Marker(shard, "a", LAST.stage_id, {"output": parts}, Stats(), "2026-01-01")
        store.put_bytes(marker_uri(LAST.uri(output), shard), marker.to_json())


def test_the_manifest_is_written_over_ticks_and_lists_every_part_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(manifest, "LIST_SHARDS", 10)
    monkeypatch.setattr(manifest, "LISTS_PER_TICK", 2)
    output, shards = str(tmp_path / "out"), 45
    commit_shards(output, shards)
    storage = JobStorage(LocalStore())
    progress, uri, ticks = ManifestProgress(LAST.stage_id), None, 0
    while uri is None:
        # Through status, as the operator carries it from tick to tick.
        status = json.loads(json.dumps(progress.to_status()))
        progress = ManifestProgress.from_status(status, LAST.stage_id)
        progress, uri = write_manifest_step(storage, "ns/job", output, LAST, shards, progress)
        ticks += 1
    assert ticks == 3  # 5 lists, 2 per tick
    body = json.loads(Path(uri).read_text())
    assert body["records"] == shards * PARTS_PER_SHARD * 10
    listed = [
        json.loads(line) for lst in body["partLists"] for line in Path(lst).read_text().splitlines()
    ]
    assert len(listed) == len({p["uri"] for p in listed}) == shards * PARTS_PER_SHARD
    assert sorted({p["shard"] for p in listed}) == list(range(shards))


class FakeClock:
    """A clock that advances `step` seconds each time it is read."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


class TimedStorage(JobStorage):
    """Notes the marker reads started after the current step's deadline, but its first."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(LocalStore())
        self.clock, self.deadline, self.first = clock, 0.0, 0
        self.late: list[int] = []

    def read_marker(self, stage_uri: str, shard: int) -> Marker | None:
        if self.clock.now > self.deadline and shard != self.first:
            self.late.append(shard)
        return super().read_marker(stage_uri, shard)


def manifest_over_ticks(
    output: str, shards: int, budget: float, clock: FakeClock
) -> tuple[str, int, ManifestProgress]:
    """Steps until the manifest is written, each under a deadline `budget` past its start,
    the progress carried through status; returns the URI, the ticks and the last progress."""
    storage = TimedStorage(clock)
    progress, uri, ticks = ManifestProgress(LAST.stage_id), None, 0
    while uri is None:
        progress = ManifestProgress.from_status(
            json.loads(json.dumps(progress.to_status())), LAST.stage_id
        )
        storage.deadline, storage.first = clock.now + budget, progress.next
        progress, uri = write_manifest_step(
            storage, "ns/j", output, LAST, shards, progress, storage.deadline, clock
        )
        ticks += 1
    assert storage.late == []
    return uri, ticks, progress


def test_a_tick_stops_reading_at_its_deadline_and_the_next_continues_at_the_cut(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No marker read starts after the deadline: lists are cut there, and the lists of all
    ticks together still list every part exactly once."""
    monkeypatch.setattr(manifest, "LIST_SHARDS", 10)
    monkeypatch.setattr("palimpsest_operator.progress.MARKER_READ_THREADS", 1)  # in order
    output, shards = str(tmp_path / "out"), 45
    commit_shards(output, shards)
    uri, ticks, progress = manifest_over_ticks(output, shards, budget=6.5, clock=FakeClock(1.0))
    assert ticks > 45 // 10 + 1  # more ticks than lists: the deadline, not the list, ended them
    assert progress.cuts and all(c % 10 for c in progress.cuts)
    body = json.loads(Path(uri).read_text())
    assert len(body["partLists"]) == len(set(body["partLists"])) == 5 + len(progress.cuts)
    listed = [
        json.loads(line) for lst in body["partLists"] for line in Path(lst).read_text().splitlines()
    ]
    assert len(listed) == len({p["uri"] for p in listed}) == shards * PARTS_PER_SHARD
    assert sorted({p["shard"] for p in listed}) == list(range(shards))
    assert body["records"] == shards * PARTS_PER_SHARD * 10


def test_a_tick_past_its_deadline_still_reads_one_marker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(manifest, "LIST_SHARDS", 10)
    output = str(tmp_path / "out")
    commit_shards(output, 3)
    clock = FakeClock(100.0)
    progress, uri = write_manifest_step(
        JobStorage(LocalStore()),
        "ns/j",
        output,
        LAST,
        3,
        ManifestProgress(LAST.stage_id),
        deadline=0.0,
        clock=clock,
    )
    assert uri is None and progress.next == 1 and progress.cuts == (1,)


class SizedStore(LocalStore):
    """Remembers the largest object written: what the writer held in memory at once."""

    largest = 0

    def put_bytes(self, uri: str, data: bytes, *, if_absent: bool = False) -> bool:
        self.largest = max(self.largest, len(data))
        return super().put_bytes(uri, data, if_absent=if_absent)


def test_what_a_tick_holds_does_not_grow_with_the_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The largest thing built in memory is one part list, for 300 shards as for 3,000."""
    monkeypatch.setattr(manifest, "LIST_SHARDS", 100)
    largest = []
    for shards in (300, 3000):
        output = str(tmp_path / f"out{shards}")
        commit_shards(output, shards)
        store = SizedStore()
        progress, uri = ManifestProgress(LAST.stage_id), None
        while uri is None:
            progress, uri = write_manifest_step(
                JobStorage(store), "ns/j", output, LAST, shards, progress
            )
        largest.append(store.largest)
    assert largest[1] < 1.1 * largest[0], largest
