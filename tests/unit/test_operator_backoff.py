"""A failing tenant backs off, a slow endpoint is cut short, and the operator's S3 clients
give up fast."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest

from palimpsest.job import StorageSpec
from palimpsest.storage import LocalStore
from palimpsest_operator import constants as c
from palimpsest_operator.backoff import Backoff
from palimpsest_operator.config import CONFIG
from palimpsest_operator.progress import Tally, advance
from palimpsest_operator.status import degraded
from palimpsest_operator.storage import JobStorage, job_storage
from tests.unit.test_operator_progress import commit_shard


@pytest.mark.parametrize(
    ("failures", "wait"), [(1, 15.0), (2, 30.0), (3, 60.0), (5, 240.0), (6, 300.0), (20, 300.0)]
)
def test_waits_double_up_to_the_cap(failures: int, wait: float) -> None:
    backoff = Backoff(base=15.0, cap=300.0, slots=2)
    delays = [backoff.failed("a", now=0.0) for _ in range(failures)]
    assert delays[-1] == wait
    assert not backoff.admit("a", now=wait - 0.1) and backoff.admit("a", now=wait)
    assert backoff.admit("b", now=0.0), "other jobs are not held"


def test_failing_jobs_retry_only_through_the_free_slots() -> None:
    backoff = Backoff(base=1.0, cap=10.0, slots=2)
    for key in "abcd":
        backoff.failed(key, now=0.0)
    assert [backoff.admit(k, now=5.0) for k in "abcd"] == [True, True, False, False]
    assert backoff.admit("healthy", now=5.0), "a job that has not failed needs no slot"
    backoff.release("a")
    assert backoff.admit("c", now=5.0) and not backoff.admit("d", now=5.0)


def test_one_success_forgets_the_failures() -> None:
    backoff = Backoff(base=10.0, cap=100.0, slots=1)
    backoff.failed("a", 0.0)
    backoff.failed("a", 0.0)
    assert backoff.admit("a", 100.0)
    backoff.release("a")
    backoff.succeeded("a")
    assert backoff.admit("a", 0.0) and backoff.failed("a", 0.0) == 10.0


def test_a_failed_tick_keeps_the_status_and_adds_a_degraded_condition() -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    ready = {"type": c.COND_READY, "status": "False"}
    status = {"phase": c.FILTERING, "shards": {"succeeded": 4}, "conditions": [ready]}
    once = degraded(status, "temporary error: ReadTimeoutError", now)
    assert once["shards"] == {"succeeded": 4} and once["phase"] == c.FILTERING
    assert once["message"] == "temporary error: ReadTimeoutError"
    (kept, condition) = once["conditions"]
    assert kept == ready and condition["type"] == c.COND_DEGRADED
    assert condition["status"] == "True" and "ReadTimeoutError" in condition["message"]
    later = degraded(once, "again", now + dt.timedelta(minutes=5))
    assert [x["type"] for x in later["conditions"]] == [c.COND_READY, c.COND_DEGRADED]
    assert later["conditions"][1]["lastTransitionTime"] == condition["lastTransitionTime"]


def test_marker_reads_past_the_deadline_are_left_to_the_next_tick(tmp_path: Path) -> None:
    stage = str(tmp_path / "stage-x")
    for shard in range(4):
        commit_shard(stage, shard)
    storage = JobStorage(LocalStore())
    tally = Tally.empty(4)
    spent = time.monotonic() - 1
    assert advance(tally, storage, stage, [0, 1, 2, 3], scan=False, deadline=spent) == 0
    assert advance(tally, storage, stage, [0, 1, 2, 3], scan=False, deadline=None) == 4


def test_the_operator_s_s3_clients_give_up_fast() -> None:
    storage = job_storage("s3://bucket/out", StorageSpec(endpoint="http://127.0.0.1:9"), None)
    config = storage.store._client.meta.config  # type: ignore[attr-defined]
    assert (config.connect_timeout, config.read_timeout) == (
        CONFIG.s3_connect_timeout,
        CONFIG.s3_read_timeout,
    )
    attempts = config.retries["total_max_attempts"]
    assert attempts == CONFIG.s3_retries + 1 and config.retries["mode"] == "standard"
    worst = attempts * (CONFIG.s3_connect_timeout + CONFIG.s3_read_timeout)
    assert worst <= 15, "one call of one tenant never holds a tick thread for long"
