"""How the filter benchmark spreads its rounds of ours around the published side's parts."""

from __future__ import annotations

from types import ModuleType

import pytest

from tests.support.benchmarks import load_benchmark


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_benchmark("filter_speed")


@pytest.mark.parametrize(
    ("rounds", "parts", "counts"),
    [(3, 2, [1, 1, 1]), (1, 2, [0, 1, 0]), (2, 2, [1, 1, 0]), (2, 1, [1, 1]), (1, 1, [1, 0])],
)
def test_rounds_go_between_the_published_parts_middle_first(
    bench: ModuleType, rounds: int, parts: int, counts: list[int]
) -> None:
    assert bench.spread(rounds, parts) == counts


@pytest.mark.parametrize("rounds", range(1, 12))
@pytest.mark.parametrize("parts", [1, 2, 3])
def test_every_round_runs_once_and_the_gaps_differ_by_at_most_one(
    bench: ModuleType, rounds: int, parts: int
) -> None:
    counts = bench.spread(rounds, parts)
    assert len(counts) == parts + 1
    assert sum(counts) == rounds
    assert max(counts) - min(counts) <= 1
