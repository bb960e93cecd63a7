"""Kopf handlers: thin glue between Kopf's events and the reconcile pass.

A timer runs `reconcile` for each RewriteJob every tick: it plans, launches and follows the
Jobs and returns the new status, which is written here, in one place, as one merge patch
(the counting checkpoint and the totals travel together). Job creation is idempotent, so a
restarted operator picks up where it stopped without duplicates. Deleting a RewriteJob
deletes its Jobs through their owner references; outputs on S3 stay.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

import kopf
from botocore.exceptions import BotoCoreError, ClientError
from kubernetes.client.exceptions import ApiException

from palimpsest.job import Job
from palimpsest.storage import StorageError, is_s3
from palimpsest_operator import constants as c
from palimpsest_operator import metrics
from palimpsest_operator.backoff import Backoff
from palimpsest_operator.cluster import Cluster, Resource, TickResult
from palimpsest_operator.config import CONFIG
from palimpsest_operator.kube import KubeCluster, load_config
from palimpsest_operator.reconcile import StorageFactory, reconcile
from palimpsest_operator.status import degraded, merge_patch
from palimpsest_operator.storage import JobStorage, job_storage
from palimpsest_operator.trust import TrustPolicy

TEMPORARY: tuple[type[BaseException], ...] = (
    StorageError,
    BotoCoreError,
    ClientError,
    ApiException,
    OSError,
)
"""Errors a later tick may not meet again (network, throttling, a restarting endpoint)."""

_STORAGES: dict[tuple[Any, ...], JobStorage] = {}
_STORAGES_LOCK = threading.Lock()
_CLUSTER: list[KubeCluster] = []
TRUST = TrustPolicy(CONFIG.allowed_image_prefixes, CONFIG.secret_refs)
BACKOFF = Backoff(CONFIG.tick_seconds, CONFIG.backoff_max_seconds, CONFIG.retry_slots)


def storage_for(job: Job, credentials: Mapping[str, str] | None) -> JobStorage:
    """One S3 client per (endpoint, region, credentials), reused across ticks."""
    key = (is_s3(job.output_uri), job.storage, tuple(sorted((credentials or {}).items())))
    with _STORAGES_LOCK:
        if key not in _STORAGES:
            _STORAGES[key] = job_storage(job.output_uri, job.storage, credentials)
        return _STORAGES[key]


def cluster() -> KubeCluster:
    if not _CLUSTER:
        load_config()
        _CLUSTER.append(KubeCluster())
    return _CLUSTER[0]


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = f"{c.GROUP}/operator"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=c.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=c.GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.INFO
    # The resource and namespaces are fixed at start: no CRD or namespace watching, so the
    # operator needs no cluster-wide read access beyond its own resource (manifests/README.md).
    settings.scanning.disabled = True
    settings.execution.max_workers = 8
    cluster()


@kopf.timer(c.GROUP, c.VERSION, c.PLURAL, interval=CONFIG.tick_seconds, initial_delay=0)
def tick(body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger, **_: Any) -> None:
    started = time.monotonic()
    old_status = dict(body.get("status") or {})
    resource = Resource(manifest=dict(body), status=old_status)
    outcome = guarded_tick(resource, cluster(), storage_for, BACKOFF)
    if outcome is None:
        return
    changes = merge_patch(old_status, outcome.status)
    if changes:
        patch.status.update(changes)
    for event in outcome.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
        logger.info("%s: %s", event.reason, event.message)
    if old_status.get("message") != outcome.status.get("message"):
        logger.info("%s", outcome.status.get("message"))
    meta = body.get("metadata") or {}
    metrics.observe(str(meta.get("namespace")), str(meta.get("name")), outcome.status)
    metrics.TICK_SECONDS.observe(time.monotonic() - started)


def guarded_tick(
    resource: Resource, kube: Cluster, storages: StorageFactory, backoff: Backoff
) -> TickResult | None:
    """One tick of one RewriteJob under its time budget and its backoff: None while the job
    waits after a failed tick (the thread goes to other RewriteJobs meanwhile)."""
    key = (resource.namespace, resource.name)
    if not backoff.admit(key, time.monotonic()):
        return None
    try:
        result = reconcile(
            resource, kube, storages, budget=CONFIG.tick_budget_seconds, policy=TRUST
        )
    except TEMPORARY as exc:
        # S3 or the API server failed or did not answer: say so in status and back off; the
        # counting checkpoint is untouched, so nothing is lost or counted twice.
        delay = backoff.failed(key, time.monotonic())
        message = f"temporary error, retrying in {delay:.0f}s: {type(exc).__name__}: {exc}"
        now = dt.datetime.now(dt.UTC)
        return TickResult(degraded(resource.status, message[:1000], now))
    finally:
        backoff.release(key)
    backoff.succeeded(key)
    return result


@kopf.on.delete(c.GROUP, c.VERSION, c.PLURAL, optional=True)
def forget(name: str, namespace: str | None, **_: Any) -> None:
    metrics.forget(namespace or "", name)
