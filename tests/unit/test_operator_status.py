"""Throughput, ETA and GPU-hours in status, from the tallies one tick saw."""

from __future__ import annotations

import datetime as dt

import pytest

from palimpsest.commit import Marker
from palimpsest.stats import Stats
from palimpsest_operator import constants as c
from palimpsest_operator.progress import Tally
from palimpsest_operator.status import StageView, rates, stage_entry, totals

START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def tally(total: int, done: int, gpus: int = 0, engine_seconds: float = 0.0) -> Tally:
    out = Tally.empty(total)
    for shard in range(done):
        stats = Stats(records_in=100, kept=90, generated_tokens=1000)
        stats.engine_seconds, stats.gpus = engine_seconds, gpus
        out.add(Marker(shard, "a", "s", {}, stats, "t"))
    return out


def view(t: Tally, kind: str = "sgcr", started: str | None = "2026-01-01T00:00:00Z") -> StageView:
    return StageView(kind, f"{kind}-1", "s3://b/o", None, c.STAGE_RUNNING, t, started_at=started)


@pytest.mark.parametrize(
    ("done", "elapsed", "baseline", "eta", "records_per_second"),
    [
        (10, 100, None, 900, 10.0),  # 10 of 100 shards in 100 s: 90 more take 900 s
        (50, 100, None, 100, 50.0),
        (100, 100, None, 0, 100.0),  # done: nothing left
        (0, 100, None, None, 0.0),  # nothing committed yet: no ETA
        # 40 shards were on S3 before this run: only 20 were done by it, in 200 s
        (60, 200, {"shards": 40, "records": 4000, "generated": 40000}, 400, 10.0),
        (40, 200, {"shards": 40, "records": 4000, "generated": 40000}, None, 0.0),
    ],
)
def test_eta_and_throughput(
    done: int,
    elapsed: int,
    baseline: dict[str, int] | None,
    eta: int | None,
    records_per_second: float,
) -> None:
    got = rates(view(tally(100, done)), START + dt.timedelta(seconds=elapsed), baseline)
    assert got.get("etaSeconds") == eta
    assert got["throughput"]["recordsPerSecond"] == records_per_second
    assert got["throughput"]["generatedTokensPerSecond"] == records_per_second * 10


def test_no_rates_before_the_stage_started() -> None:
    assert rates(view(tally(10, 5), started=None), START) == {}


def test_gpu_hours_are_engine_seconds_times_gpus_per_stage_and_in_total() -> None:
    # 4 shards, each pod's engine ran 900 s per shard (model load and idle included) on 4 GPUs
    sgcr = view(tally(10, 4, gpus=4, engine_seconds=900.0), "sgcr")
    scor = view(tally(10, 2, gpus=4, engine_seconds=450.0), "scor")
    filtered = view(tally(10, 10), "filter")
    assert stage_entry(sgcr)["gpuHours"] == 4.0  # 4 x 900 s x 4 GPUs
    assert stage_entry(scor)["gpuHours"] == 1.0
    assert stage_entry(filtered)["gpuHours"] == 0.0  # CPU stages hold no GPU
    assert totals([filtered, sgcr, scor])["gpuHours"] == 5.0


def test_gpu_hours_survive_the_checkpoint() -> None:
    again = Tally.decode(tally(10, 3, gpus=2, engine_seconds=600.0).encode(), 10)
    assert stage_entry(view(again))["gpuHours"] == 1.0
