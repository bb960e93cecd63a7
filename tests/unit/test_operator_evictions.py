"""Kubelet evictions count against an index's retries; other disruptions never do."""

from __future__ import annotations

import pytest

from palimpsest_operator.evictions import FailedPod, counted_failures, exhausted_indexes

KUBELET = "TerminationByKubelet"


@pytest.mark.parametrize(
    ("pods", "retries", "exhausted"),
    [
        ([], 3, []),
        # preemption, API evictions, the taint manager and pod GC never count
        (
            [FailedPod(0, r) for r in ("PreemptionByScheduler", "EvictionByEvictionAPI")] * 3
            + [FailedPod(0, "DeletionByTaintManager"), FailedPod(0, "DeletionByPodGC")],
            1,
            [],
        ),
        ([FailedPod(0, KUBELET)] * 3, 3, []),  # within its retries
        ([FailedPod(0, KUBELET)] * 4, 3, [0]),
        ([FailedPod(2, KUBELET)] * 2 + [FailedPod(2)] * 2, 3, [2]),  # both kinds add up
        ([FailedPod(1)] * 9, 3, []),  # plain failures alone: the Job's own backoff limit
        ([FailedPod(0, KUBELET), FailedPod(1, KUBELET)], 0, [0, 1]),
        ([FailedPod(5, KUBELET), FailedPod(4, "PreemptionByScheduler")] * 2, 1, [5]),
    ],
)
def test_exhausted_indexes(pods: list[FailedPod], retries: int, exhausted: list[int]) -> None:
    assert exhausted_indexes(pods, retries) == exhausted


def test_counted_failures_split_evictions_from_failures() -> None:
    pods = [FailedPod(3, KUBELET), FailedPod(3), FailedPod(3, "PreemptionByScheduler")]
    assert counted_failures(pods) == {3: (1, 1)}
