"""RewriteJobs on a Kueue queue: real Kueue admits their Jobs within its quota.

The test cluster runs the Kueue manager (tests/cluster/kueue.py). Two RewriteJobs share one
LocalQueue whose ClusterQueue has room for one rewrite pod: the second job's rewrite Job waits,
suspended, with its Workload and Kueue's reason in the job's status, and runs once the first
has finished and given its quota back.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.cluster.fixtures import Cluster
from tests.e2e.rewritejobs import (
    Operator,
    assert_status_matches_markers,
    phase_in,
    rewrite_job,
    s3,
)
from tests.support.openai_server import Reply, ScriptedOpenAIServer
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

QUEUE = "rewrite"
REWRITE_CPU = "1"
SLOW_ANSWER_SECONDS = 15.0


def queue_objects(ns: str) -> list[dict[str, Any]]:
    """Flavors for the CPU and GPU pools and a ClusterQueue with one rewrite pod of quota."""
    flavors = {"cpu": f"cpu-{ns}", "gpu": f"gpu-{ns}"}
    objects: list[dict[str, Any]] = [
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "ResourceFlavor",
            "metadata": {"name": name},
            "spec": {"nodeLabels": {"palimpsest.dev/pool": pool}},
        }
        for pool, name in flavors.items()
    ]

    def quota(name: str, cpu: str) -> dict[str, Any]:
        return {
            "name": name,
            "resources": [
                {"name": "cpu", "nominalQuota": cpu},
                {"name": "memory", "nominalQuota": "1000Gi"},
                {"name": "nvidia.com/gpu", "nominalQuota": 8},
            ],
        }

    objects.append(
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "ClusterQueue",
            "metadata": {"name": f"rewrite-{ns}"},
            "spec": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
                "resourceGroups": [
                    {
                        "coveredResources": ["cpu", "memory", "nvidia.com/gpu"],
                        # filter pods fit the CPU pool's flavor; rewrite pods (GPU pool's node
                        # selector) only the GPU flavor, whose quota is one rewrite pod
                        "flavors": [
                            quota(flavors["cpu"], "16"),
                            quota(flavors["gpu"], REWRITE_CPU),
                        ],
                    }
                ],
            },
        }
    )
    objects.append(
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "LocalQueue",
            "metadata": {"name": QUEUE, "namespace": ns},
            "spec": {"clusterQueue": f"rewrite-{ns}"},
        }
    )
    return objects


@pytest.fixture()
def kueue_queue(k8s_cluster: Cluster, namespace: str) -> Iterator[str]:
    objects = queue_objects(namespace)
    k8s_cluster.apply(yaml.safe_dump_all(objects))
    try:
        yield QUEUE
    finally:
        for item in reversed(objects):
            k8s_cluster.kubectl(
                "delete",
                item["kind"].lower(),
                item["metadata"]["name"],
                *(["-n", namespace] if item["kind"] == "LocalQueue" else []),
                "--wait=false",
                check=False,
            )


def write_records(bucket: str, prefix: str, job: str, records: int) -> str:
    lines = [
        json.dumps(
            {"id": f"{job}-{i}", "text": f"def {job}_{i}(x: int) -> int:\n    return x + {i}\n"}
        )
        for i in range(records)
    ]
    s3().put_object(
        Bucket=bucket, Key=f"{prefix}/input/part-0.jsonl", Body=("\n".join(lines) + "\n").encode()
    )
    return f"s3://{bucket}/{prefix}/input/"


def answer(body: dict[str, Any]) -> Reply:
    """A fenced rewrite; the first job's answers are slow, so its rewrite holds the quota."""
    last = str(body["messages"][-1]["content"])
    delay = SLOW_ANSWER_SECONDS if "first_" in last else 0.0
    return Reply(
        f"Score: 8\n\n```python\n{last}\n# rewritten\n```\n",
        prompt_tokens=20,
        completion_tokens=12,
        delay=delay,
    )


def job_times(cluster: Cluster, ns: str, owner: str, kind: str) -> tuple[str, str]:
    """startTime and completionTime of the RewriteJob's Job for one stage kind."""
    out = cluster.kubectl(
        "get", "jobs", "-n", ns, "-l", f"palimpsest.dev/rewritejob={owner}", "-o", "json"
    ).stdout
    for item in json.loads(out)["items"]:
        if item["metadata"]["labels"].get("palimpsest.dev/stage") == kind:
            return item["status"]["startTime"], item["status"]["completionTime"]
    raise AssertionError(f"no {kind} Job of {owner}")


def finished(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        return phase_in(cluster, ns, name, "Succeeded", "Failed")

    status: dict[str, Any] = wait_until(f"{name} to finish", done, timeout=180)
    return status


def waiting_for_admission(cluster: Cluster, ns: str, name: str) -> dict[str, Any] | None:
    status = phase_in(cluster, ns, name, "WaitingForAdmission")
    if status is None:
        return None
    waiting = {x["type"]: x for x in status["conditions"]}["WaitingForAdmission"]
    return waiting if "workload job-" in waiting["message"] else None


def test_kueue_admits_one_rewrite_at_a_time_within_the_queue_s_quota(
    k8s_cluster: Cluster,
    namespace: str,
    operator: Operator,
    kueue_queue: str,
) -> None:
    server = ScriptedOpenAIServer()
    server.default = answer
    bucket = k8s_cluster.bucket
    rewrite = {
        "image": "palimpsest/rewrite:test",
        "resources": {"cpu": REWRITE_CPU},
        "parallelism": 1,
        "shardsPerPod": 4,
        "engine": {"type": "openai", "model": "scripted", "baseURL": ""},
    }
    with server.run():
        rewrite["engine"]["baseURL"] = server.base_url  # type: ignore[index]
        spec = {"stages": ["filter", "sgcr"], "rewrite": rewrite, "queueName": kueue_queue}
        for name in ("first", "second"):
            prefix = f"e2e/{namespace}/{name}"
            input_uri = write_records(bucket, prefix, name, records=6)
            output = f"s3://{bucket}/{prefix}/output"
            k8s_cluster.apply(rewrite_job(name, input_uri, output, **spec), namespace)
            if name == "first":
                wait_until(
                    "the first job's rewrite to be admitted",
                    lambda: phase_in(k8s_cluster, namespace, "first", "Rewriting"),
                    timeout=120,
                )
        waiting = wait_until(
            "the second job's rewrite to wait for the quota",
            lambda: waiting_for_admission(k8s_cluster, namespace, "second"),
            timeout=120,
        )
        assert "sgcr" in waiting["message"] and f"queue {kueue_queue}" in waiting["message"]
        assert "quota" in waiting["message"]  # Kueue's own reason, read from the Workload
        statuses = [finished(k8s_cluster, namespace, name) for name in ("first", "second")]
    for status in statuses:
        assert status["phase"] == "Succeeded", status.get("message")
        assert status["records"]["in"] == 6
        assert_status_matches_markers(status)
    _, first_done = job_times(k8s_cluster, namespace, "first", "sgcr")
    second_started, _ = job_times(k8s_cluster, namespace, "second", "sgcr")
    assert second_started >= first_done  # RFC 3339 UTC timestamps order as text
