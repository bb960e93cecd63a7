"""The `Cluster` calls of a tick, made with the official Kubernetes client.

Only what the operator's RBAC grants is used here: get Secrets and ConfigMaps, list, create,
patch and delete Jobs in the RewriteJob's namespace, list failed pods and Kueue Workloads
(manifests/README.md lists the rules).
Creating a Job that already exists (409) counts as success: names are deterministic, so it
is the same Job.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from palimpsest_operator import constants as c
from palimpsest_operator.cluster import JobView, WorkloadView
from palimpsest_operator.evictions import FailedPod

JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
KUEUE_GROUP = "kueue.x-k8s.io"
# Kueue serves v1beta2 since 0.15 and v1beta1 before; the first one the API server has wins.
KUEUE_VERSIONS = ("v1beta2", "v1beta1")
KUEUE_JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"


def load_config() -> None:
    """In-cluster credentials in a pod; otherwise the kubeconfig ($KUBECONFIG)."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()


class KubeCluster:
    def __init__(self, api: client.ApiClient | None = None) -> None:
        self.core = client.CoreV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    def _secret(self, namespace: str, name: str) -> Any | None:
        try:
            return self.core.read_namespaced_secret(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        secret = self._secret(namespace, name)
        if secret is None:
            return None
        data = secret.data or {}
        return {k: base64.b64decode(v).decode("utf-8") for k, v in data.items()}

    def read_secret_labels(self, namespace: str, name: str) -> dict[str, str] | None:
        secret = self._secret(namespace, name)
        return None if secret is None else dict(secret.metadata.labels or {})

    def read_config_map(self, namespace: str, name: str) -> dict[str, str] | None:
        try:
            config_map = self.core.read_namespaced_config_map(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return dict(config_map.data or {})

    def list_jobs(self, namespace: str, owner: str) -> list[JobView]:
        from palimpsest_operator.jobs import job_labels_selector

        jobs = self.batch.list_namespaced_job(namespace, label_selector=job_labels_selector(owner))
        return [_view(job) for job in jobs.items]

    def create_job(self, manifest: dict[str, Any]) -> bool:
        try:
            self.batch.create_namespaced_job(manifest["metadata"]["namespace"], manifest)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    def delete_job(self, namespace: str, name: str) -> None:
        try:
            # Foreground: the Job stays (marked deleting) until its pods are gone, so the
            # operator can tell when no old pod can still commit.
            self.batch.delete_namespaced_job(name, namespace, propagation_policy="Foreground")
        except ApiException as exc:
            if exc.status != 404:
                raise

    def set_job_suspended(self, namespace: str, name: str, suspended: bool) -> None:
        self.batch.patch_namespaced_job(name, namespace, {"spec": {"suspend": suspended}})

    def list_failed_pods(self, namespace: str, job: str) -> list[FailedPod]:
        pods = self.core.list_namespaced_pod(
            namespace,
            label_selector=f"{JOB_NAME_LABEL}={job}",
            field_selector="status.phase=Failed",
        )
        return [_failed_pod(pod) for pod in pods.items]

    def find_workload(self, namespace: str, job_uid: str) -> WorkloadView | None:
        for version in KUEUE_VERSIONS:
            try:
                found = self.custom.list_namespaced_custom_object(
                    KUEUE_GROUP,
                    version,
                    namespace,
                    "workloads",
                    label_selector=f"{KUEUE_JOB_UID_LABEL}={job_uid}",
                )
            except ApiException as exc:
                # 404: Kueue (or this version of its API) is not installed; 403: the operator's
                # role was installed without the Kueue rule. Either way the message says less.
                if exc.status in (403, 404):
                    continue
                raise
            items = found.get("items") or []
            return workload_view(items[0]) if items else None
        return None


def workload_view(workload: Mapping[str, Any]) -> WorkloadView:
    """The name of a Workload object and the message of its QuotaReserved condition."""
    conditions = (workload.get("status") or {}).get("conditions") or []
    message = next(
        (str(x.get("message", "")) for x in conditions if x.get("type") == "QuotaReserved"), ""
    )
    return WorkloadView(str(workload["metadata"]["name"]), message)


def _failed_pod(pod: Any) -> FailedPod:
    annotations = pod.metadata.annotations or {}
    reason = next(
        (
            cond.reason or ""
            for cond in pod.status.conditions or []
            if cond.type == "DisruptionTarget" and cond.status == "True"
        ),
        None,
    )
    return FailedPod(int(annotations.get(INDEX_ANNOTATION, "-1")), reason)


def _view(job: Any) -> JobView:
    status = job.status
    finished = None
    for condition in status.conditions or []:
        if condition.type in ("Complete", "Failed") and condition.status == "True":
            finished = condition.type
    annotations = job.metadata.annotations or {}
    labels = job.metadata.labels or {}
    return JobView(
        name=job.metadata.name,
        stage_id=labels.get(c.LABEL_STAGE_ID, ""),
        suspended=bool(job.spec.suspend),
        active=int(status.active or 0),
        completed_indexes=status.completed_indexes,
        failed_indexes=status.failed_indexes,
        finished=finished,
        shards_per_index=int(annotations.get(c.ANNOTATION_SHARDS_PER_INDEX, "1")),
        deleting=job.metadata.deletion_timestamp is not None,
        shard_list=annotations.get(c.ANNOTATION_SHARD_LIST),
        uid=str(job.metadata.uid or ""),
    )
