"""The linter pool against samples built to exhaust it: memory bombs and killed workers.

These start real linter processes (a few seconds each), but no services.
"""

from __future__ import annotations

import resource
from pathlib import Path

from palimpsest.lint.pool import LintOutcome, LintPool, LintTask
from palimpsest.records import Fields, RawRecord, Record
from palimpsest.stages.filter import CodeFilter, FilterSettings
from palimpsest.stats import Stats

# 34 bytes that make astroid build a 99,999,999-element list while inferring the unpacking.
BOMB = "A = [0] * 99_999_999\nx, y = A\n"
GOOD = "VALUE = 1\nprint(VALUE)\n"
MIB = 1024 * 1024


def lint_all(
    pool: LintPool, sources: list[str], also: tuple[int, ...] = ()
) -> dict[int, LintOutcome]:
    """Lint `sources` under keys 0.., waiting for them and for the keys `also` in flight."""
    for key, source in enumerate(sources):
        pool.submit(LintTask(key, source, None, 0.0))
    wanted = set(range(len(sources))) | set(also)
    outcomes: dict[int, LintOutcome] = {}
    while not wanted <= outcomes.keys():
        outcomes.update((o.key, o) for o in pool.collect())
    return outcomes


def test_a_memory_bomb_is_rejected_and_the_worker_replaced(tmp_path: Path) -> None:
    with LintPool(1, time_limit=60, memory_limit=256 * MIB, workdir=tmp_path) as pool:
        outcomes = lint_all(pool, [GOOD, BOMB, GOOD])
        assert pool.restarts == 1
    assert outcomes[1].failure == "pylint_memory"
    assert outcomes[1].result is None
    for key in (0, 2):
        assert outcomes[key].result is not None and outcomes[key].result.rating == 10.0


def test_the_address_space_cap_never_raises_an_existing_limit(tmp_path: Path) -> None:
    # The cap is set in the worker; a tighter limit inherited from the parent stays in force.
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with LintPool(1, time_limit=60, memory_limit=100_000 * MIB, workdir=tmp_path) as pool:
        limit = lint_all(pool, ["import resource\n"])
        assert limit[0].result is not None
    assert resource.getrlimit(resource.RLIMIT_AS) == (soft, hard)


def test_a_worker_killed_mid_sample_rejects_only_that_sample(tmp_path: Path) -> None:
    with LintPool(1, time_limit=60, workdir=tmp_path) as pool:
        lint_all(pool, [GOOD])
        worker = pool._workers[0]
        pool.submit(LintTask(7, GOOD * 200, None, 0.0))
        worker.process.kill()  # what the kernel's out-of-memory killer does
        outcomes = lint_all(pool, [GOOD], also=(7,))
        assert pool.restarts == 1
    assert outcomes[7].failure == "pylint_memory"
    assert outcomes[0].result is not None and outcomes[0].result.rating == 10.0


def test_the_filter_rejects_the_bomb_and_finishes_the_shard(tmp_path: Path) -> None:
    settings = FilterSettings(memory_limit_mb=256, exact_scores=True)
    kept: list[Record] = []
    rejected: list[Record] = []
    items = [RawRecord("t", i, {"id": i, "text": t}) for i, t in enumerate([BOMB, GOOD, GOOD])]
    with LintPool(1, memory_limit=settings.memory_limit, workdir=tmp_path) as pool:
        CodeFilter(settings, pool, Fields(), 1).run(items, kept.append, rejected.append, Stats())
    assert [r["reject_reason"] for r in rejected] == ["pylint_memory"]
    assert [k["id"] for k in kept] == [1, 2]


def test_every_sample_directory_is_removed_timeouts_and_crashes_included(tmp_path: Path) -> None:
    slow = "\n".join(f"v{i} = [a for a in range({i})]" for i in range(4000)) + "\nprint(v1)\n"
    with LintPool(2, time_limit=1, workdir=tmp_path) as pool:
        outcomes = lint_all(pool, [GOOD, slow, GOOD, slow])
        assert {outcomes[1].failure, outcomes[3].failure} == {"pylint_timeout"}
        pool.submit(LintTask(9, GOOD, None, 0.0))
        pool._workers[0].process.kill()
        pool._workers[1].process.kill()
        lint_all(pool, [GOOD], also=(9,))
        # Only the live workers' directories remain, and no sample file in them.
        assert len(list(tmp_path.iterdir())) == 2
        assert not list(tmp_path.rglob("_palimpsest_sample_*"))
    assert list(tmp_path.iterdir()) == []


def test_a_pool_without_a_workdir_removes_its_temp_root() -> None:
    with LintPool(1) as pool:
        root = pool.temp_root
        lint_all(pool, [GOOD])
        assert root.is_dir()
    assert not root.exists()


def test_a_text_over_the_size_limit_is_rejected_before_linting(tmp_path: Path) -> None:
    settings = FilterSettings(max_record_bytes=1000, exact_scores=True)
    texts = [GOOD, "x = 'é'\n" * 100, "x = 'é'\n" * 110, "x = (\n" * 1000]
    items = [RawRecord("t", i, {"id": i, "text": t}) for i, t in enumerate(texts)]
    kept: list[Record] = []
    rejected: list[Record] = []
    with LintPool(1, workdir=tmp_path) as pool:
        CodeFilter(settings, pool, Fields(), 1).run(items, kept.append, rejected.append, Stats())
    # 900 bytes is within 1000 (and 800 characters); 990 bytes is within; 6000 is not, and
    # that broken text is rejected for its size, not its syntax.
    reasons = {r["id"]: r["reject_reason"] for r in rejected}
    assert reasons == {3: "record_too_large"}
    assert sorted(k["id"] for k in kept) == [0, 1, 2]


def test_size_is_counted_in_utf8_bytes(tmp_path: Path) -> None:
    settings = FilterSettings(max_record_bytes=1000, exact_scores=True)
    text = "x = 'ééééé'\n" * 70  # 840 characters, 1190 bytes
    items = [RawRecord("t", 0, {"id": 0, "text": text})]
    rejected: list[Record] = []
    with LintPool(1, workdir=tmp_path) as pool:
        CodeFilter(settings, pool, Fields(), 1).run(
            items, rejected.append, rejected.append, Stats()
        )
    assert [r.get("reject_reason") for r in rejected] == ["record_too_large"]


def test_closing_stops_idle_workers_whose_readiness_was_never_read(tmp_path: Path) -> None:
    # A shard smaller than the pool leaves workers whose "ready" the pool never read. They
    # must be told to stop, not waited for and then killed (2 s lost per worker and shard).
    with LintPool(2, time_limit=60, workdir=tmp_path) as pool:
        workers = list(pool._workers)
        for worker in workers:
            assert worker.conn.poll(30), "a worker never warmed up"
        assert not any(worker.ready for worker in workers)
    assert [worker.process.exitcode for worker in workers] == [0, 0]
