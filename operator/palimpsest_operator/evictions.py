"""Counting kubelet node-pressure evictions against a Job index's retries.

A Job's podFailurePolicy matches a pod condition by type and status only, never by reason, and
the first matching rule wins. Every disruption (scheduler preemption, the Eviction API, the
taint manager, and the kubelet evicting pods from a node under memory or disk pressure) is the
same `DisruptionTarget` condition with a different reason. So the policy has two choices, both
wrong for one case: count every disruption (a preempted spot pod burns its index's retries), or
ignore every one (a shard that exhausts its node's memory is evicted by the kubelet and retried
forever). The Job ignores `DisruptionTarget`; this module does the counting the policy cannot:
the operator reads the Job's failed pods, counts per index the kubelet evictions (reason
`TerminationByKubelet`) plus the ordinary failures the Job already counted, and gives up an
index past `spec.retries.perShard` by writing a give-up object its next pod reads before any
work; that pod exits with the permanent-error code, which the policy turns into FailIndex.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from palimpsest.names import GIVE_UP_DIR, give_up_key
from palimpsest.storage import join

KUBELET_EVICTION: Final = "TerminationByKubelet"
"""DisruptionTarget reason of a pod the kubelet evicted (node pressure, node shutdown)."""


@dataclass(frozen=True)
class FailedPod:
    """A failed pod of an Indexed Job: its index and its DisruptionTarget reason, if any."""

    index: int
    disruption: str | None = None


def counted_failures(pods: Iterable[FailedPod]) -> dict[int, tuple[int, int]]:
    """Per index: (kubelet evictions, failures the Job counts itself); other disruptions
    (preemption, API eviction, taint manager) count for nothing."""
    evicted: Counter[int] = Counter()
    failed: Counter[int] = Counter()
    for pod in pods:
        if pod.disruption == KUBELET_EVICTION:
            evicted[pod.index] += 1
        elif pod.disruption is None:
            failed[pod.index] += 1
    return {i: (evicted[i], failed[i]) for i in sorted(set(evicted) | set(failed))}


def exhausted_indexes(pods: Iterable[FailedPod], retries: int) -> list[int]:
    """Indexes whose kubelet evictions plus counted failures exceed `retries`. An index with
    no kubelet eviction is left to the Job, which already fails it past its backoff limit."""
    return [
        index
        for index, (evicted, failed) in counted_failures(pods).items()
        if evicted and evicted + failed > retries
    ]


def give_up_prefix(output_uri: str, job_name: str) -> str:
    """Where the give-up objects of one Job live (a new attempt's Job starts with none)."""
    return join(output_uri, GIVE_UP_DIR, job_name)


def give_up_uri(output_uri: str, job_name: str, index: int) -> str:
    return join(give_up_prefix(output_uri, job_name), give_up_key(index))
