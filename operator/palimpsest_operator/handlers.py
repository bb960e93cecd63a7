"""Kopf handlers: thin glue between Kopf's events and the reconcile pass.

A timer runs `reconcile` for each RewriteJob every tick: it plans, launches and follows the
Jobs and returns the new status, which is written here, in one place, as one merge patch
(the counting checkpoint and the totals travel together). Job creation is idempotent, so a
restarted operator picks up where it stopped without duplicates. Deleting a RewriteJob
deletes its Jobs through their owner references; outputs on S3 stay.
"""

from __future__ import annotations

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
from palimpsest_operator.cluster import Resource
from palimpsest_operator.config import CONFIG
from palimpsest_operator.kube import KubeCluster, load_config
from palimpsest_operator.reconcile import reconcile
from palimpsest_operator.status import merge_patch
from palimpsest_operator.storage import JobStorage, job_storage

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
    try:
        result = reconcile(resource, cluster(), storage_for)
    except TEMPORARY as exc:
        # S3 or the API server hiccuped: say so in status and try again next tick; the
        # counting checkpoint is untouched, so nothing is lost or counted twice.
        message = f"temporary error, retrying: {type(exc).__name__}: {exc}"[:1000]
        if old_status.get("message") != message:
            patch.status["message"] = message
        raise kopf.TemporaryError(message, delay=CONFIG.tick_seconds) from exc
    changes = merge_patch(old_status, result.status)
    if changes:
        patch.status.update(changes)
    for event in result.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
        logger.info("%s: %s", event.reason, event.message)
    meta = body.get("metadata") or {}
    metrics.observe(str(meta.get("namespace")), str(meta.get("name")), result.status)
    metrics.TICK_SECONDS.observe(time.monotonic() - started)


@kopf.on.delete(c.GROUP, c.VERSION, c.PLURAL, optional=True)
def forget(name: str, namespace: str | None, **_: Any) -> None:
    metrics.forget(namespace or "", name)
