"""What a tick sees of the cluster and what it hands back: the `Cluster` protocol and views.

The reconcile pass reaches the API server only through `Cluster` (implemented with the
Kubernetes client in `kube`, and by a fake in the unit tests), receives the RewriteJob as a
`Resource`, sees its Jobs as `JobView`s, and returns a `TickResult`: the status to write and
the Events to post.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from palimpsest_operator.evictions import FailedPod


@dataclass(frozen=True)
class JobView:
    """What the operator needs to know about one of its Jobs."""

    name: str
    stage_id: str
    suspended: bool = False
    active: int = 0
    completed_indexes: str | None = None
    failed_indexes: str | None = None
    finished: str | None = None
    """"Complete" or "Failed" once the Job controller says so."""
    shards_per_index: int = 1
    deleting: bool = False
    """Deletion was asked for; the Job stays until its pods have stopped (foreground)."""
    shard_list: str | None = None
    """The URI of the shard list a retry Job's indexes count through (None: the plan)."""
    uid: str = ""


@dataclass(frozen=True)
class WorkloadView:
    """Kueue's Workload for a queued Job: its name and why it is not admitted yet."""

    name: str
    message: str
    """The message of its QuotaReserved condition ("" before Kueue has looked at it)."""


class Cluster(Protocol):
    """The API calls a tick makes."""

    def read_secret(self, namespace: str, name: str) -> dict[str, str] | None: ...

    def read_config_map(self, namespace: str, name: str) -> dict[str, str] | None: ...

    def read_secret_labels(self, namespace: str, name: str) -> dict[str, str] | None: ...

    def list_jobs(self, namespace: str, owner: str) -> list[JobView]: ...

    def create_job(self, manifest: dict[str, Any]) -> bool: ...

    def delete_job(self, namespace: str, name: str) -> None: ...

    def set_job_suspended(self, namespace: str, name: str, suspended: bool) -> None: ...

    def list_failed_pods(self, namespace: str, job: str) -> list[FailedPod]: ...

    def find_workload(self, namespace: str, job_uid: str) -> WorkloadView | None:
        """Kueue's Workload of the Job with this uid (None: none yet, or no Kueue)."""
        ...


@dataclass(frozen=True)
class Resource:
    """The RewriteJob as the tick receives it."""

    manifest: Mapping[str, Any]
    status: Mapping[str, Any]

    @property
    def meta(self) -> Mapping[str, Any]:
        return dict(self.manifest.get("metadata") or {})

    @property
    def name(self) -> str:
        return str(self.meta.get("name"))

    @property
    def namespace(self) -> str:
        return str(self.meta.get("namespace") or "default")

    @property
    def uid(self) -> str:
        return str(self.meta.get("uid", ""))

    @property
    def generation(self) -> int:
        return int(self.meta.get("generation") or 0)

    @property
    def annotations(self) -> Mapping[str, str]:
        return dict(self.meta.get("annotations") or {})


@dataclass(frozen=True)
class Event:
    type: str
    """Normal or Warning."""
    reason: str
    message: str


@dataclass
class TickResult:
    status: dict[str, Any]
    events: list[Event] = field(default_factory=list)
