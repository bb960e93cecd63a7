"""RewriteJobs on the test cluster: the operator as a child process, job bodies, and reads of
status, Jobs and markers that the end-to-end tests share."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import boto3
import yaml

from tests.cluster.fixtures import Cluster
from tests.support.openai_server import Reply
from tests.support.s3server import free_port
from tests.support.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "manifests" / "crd" / "rewritejobs.palimpsest.dev.yaml"
OPERATOR = REPO / ".venv" / "bin" / "palimpsest-operator"
PROMPTS = REPO / "prompts"
LOGS = REPO / ".cluster" / "logs"


class Operator:
    """`palimpsest-operator` as a child process watching one namespace."""

    def __init__(self, cluster: Cluster, namespace: str, log: Path, kubeconfig: Path) -> None:
        self.cluster = cluster
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.log = log
        self.metrics_port = free_port()
        self.liveness_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **self.cluster.env,
            "KUBECONFIG": str(self.kubeconfig),
            "PALIMPSEST_TICK_SECONDS": "2",
            "PALIMPSEST_METRICS_PORT": str(self.metrics_port),
            "PALIMPSEST_LIVENESS_PORT": str(self.liveness_port),
        }
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(OPERATOR), "-n", self.namespace],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None

    def get(self, path: str, port: int) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return str(response.read().decode("utf-8"))


RBAC_DOC = REPO / "manifests" / "README.md"


def documented_cluster_role() -> dict[str, Any]:
    """The ClusterRole of manifests/README.md, as documented (its first yaml block)."""
    text = RBAC_DOC.read_text()
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    role: dict[str, Any] = yaml.safe_load(block)
    assert role["kind"] == "ClusterRole"
    return role


def service_account_kubeconfig(cluster: Cluster, namespace: str, path: Path) -> Path:
    """A kubeconfig for a service account bound (in `namespace`) to the documented role only."""
    role = documented_cluster_role()
    role["metadata"]["name"] = f"palimpsest-operator-{namespace}"
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "palimpsest-operator", "namespace": namespace},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": role["metadata"]["name"],
        },
        "subjects": [
            {"kind": "ServiceAccount", "name": "palimpsest-operator", "namespace": namespace}
        ],
    }
    cluster.kubectl("create", "serviceaccount", "palimpsest-operator", "-n", namespace)
    cluster.apply(yaml.safe_dump_all([role, binding]))
    token = cluster.kubectl(
        "create", "token", "palimpsest-operator", "-n", namespace, "--duration=2h"
    ).stdout.strip()
    config = yaml.safe_load(cluster.kubectl("config", "view", "--raw", "--minify").stdout)
    config["users"] = [{"name": "operator", "user": {"token": token}}]
    config["contexts"][0]["context"]["user"] = "operator"
    path.write_text(yaml.safe_dump(config))
    return path


def s3() -> Any:
    return boto3.client("s3")


def code(i: int) -> str:
    if i % 4 == 3:
        return f"def broken_{i}(:\n    pass\n"
    return (
        f'"""Module {i}."""\n\n\ndef add_{i}(left: int, right: int) -> int:\n'
        f'    """Add two numbers."""\n    return left + right + {i}\n'
    )


def write_input(bucket: str, prefix: str, records: int, files: int = 1) -> str:
    per_file = records // files
    for f in range(files):
        lines = [json.dumps({"id": f"r{f}-{i}", "text": code(i)}) for i in range(per_file)]
        s3().put_object(
            Bucket=bucket,
            Key=f"{prefix}/input/part-{f}.jsonl",
            Body=("\n".join(lines) + "\n").encode(),
        )
    return f"s3://{bucket}/{prefix}/input/"


def rewrite_job(name: str, input_uri: str, output_uri: str, **spec: Any) -> str:
    body = {
        "apiVersion": "palimpsest.dev/v1alpha1",
        "kind": "RewriteJob",
        "metadata": {"name": name},
        "spec": {
            "recipe": "swallowcode",
            "stages": ["filter"],
            "input": {"uri": input_uri},
            "output": {"uri": output_uri},
            "storage": {
                "endpoint": os.environ["AWS_ENDPOINT_URL_S3"],
                "region": "us-east-1",
                "secretRef": {"name": "s3-creds"},
            },
            "sharding": {"recordsPerShard": 4},
            "filter": {
                "parallelism": 2,
                "timeLimitSeconds": 30,
                "image": "palimpsest/filter:test",
                "resources": {"cpu": "1"},
            },
            **spec,
        },
    }
    return yaml.safe_dump(body)


def patch_spec(
    cluster: Cluster, namespace: str, name: str, spec: dict[str, Any], check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Merge-patch a RewriteJob's spec, as an edit applied from Git would."""
    body = json.dumps({"spec": spec})
    return cluster.kubectl(
        "patch", "rwj", name, "-n", namespace, "--type=merge", "-p", body, check=check
    )


def rwj(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    out = cluster.kubectl("get", "rwj", name, "-n", namespace, "-o", "json").stdout
    body: dict[str, Any] = json.loads(out)
    return body


def phase_in(cluster: Cluster, namespace: str, name: str, *phases: str) -> dict[str, Any] | None:
    body = rwj(cluster, namespace, name)
    status = body.get("status") or {}
    return status if status.get("phase") in phases else None


def jobs(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    out = cluster.kubectl("get", "jobs", "-n", namespace, "-o", "json").stdout
    items: list[dict[str, Any]] = json.loads(out)["items"]
    return items


def failed_pod_logs(cluster: Cluster, namespace: str, tail: int = 40) -> str:
    """The last log lines of every failed pod of `namespace`: what a failed run's assertion
    shows, as the namespace is deleted after the test."""
    pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)
    out = []
    for pod in pods["items"]:
        if pod["status"].get("phase") == "Failed":
            name = pod["metadata"]["name"]
            logs = cluster.kubectl("logs", name, "-n", namespace, f"--tail={tail}", check=False)
            out.append(f"--- {name}\n{logs.stdout}{logs.stderr}")
    return "\n".join(out)


def marker_totals(stage_uri: str) -> dict[str, int]:
    """Sums of the markers' stats of one stage, read straight from S3."""
    bucket, _, key = stage_uri.removeprefix("s3://").partition("/")
    totals = {"shards": 0, "in": 0, "kept": 0, "rejected": 0, "prompt": 0, "generated": 0}
    pages = s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{key}/_markers/")
    for page in pages:
        for item in page.get("Contents", []):
            stats = json.loads(s3().get_object(Bucket=bucket, Key=item["Key"])["Body"].read())[
                "stats"
            ]
            totals["shards"] += 1
            for field in ("in", "kept", "rejected"):
                totals[field] += stats["records"][field]
            totals["prompt"] += stats["tokens"]["prompt"]
            totals["generated"] += stats["tokens"]["generated"]
    return totals


def assert_status_matches_markers(status: dict[str, Any]) -> None:
    for stage in status["stages"]:
        sums = marker_totals(stage["uri"])
        assert sums["shards"] == stage["shards"]["total"] == stage["shards"]["succeeded"]
        assert stage["records"] == {k: sums[k] for k in ("in", "kept", "rejected")}
        assert stage["tokens"] == {k: sums[k] for k in ("prompt", "generated")}
    first = marker_totals(status["stages"][0]["uri"])
    last = marker_totals(status["stages"][-1]["uri"])
    assert status["records"]["in"] == first["in"]
    assert status["records"]["kept"] == last["kept"]
    assert status["tokens"]["generated"] == sum(
        marker_totals(s["uri"])["generated"] for s in status["stages"]
    )


EVICTED_RECORDS = 6000
"""Enough that a filter pod is still linting when its eviction lands: 600 of these small
modules took about 2 s in the filter image, and a pod that fast finished before the kubelet
stopped it; 6000 keep a worker busy for well over ten seconds."""


def run_with_an_eviction(
    cluster: Cluster, namespace: str, filter_spec: dict[str, Any]
) -> dict[str, Any]:
    """A filter job of one shard of `EVICTED_RECORDS` records whose first running pod is
    evicted through the Eviction API, with no retry to spare (retries.perShard 0): the job
    must still succeed, the evicted attempt counting nowhere, and the evicted worker must stop
    at once (exit 143 on SIGTERM) rather than finish in its grace period. Returns the final
    status."""
    from kubernetes import client, config, watch

    prefix = f"e2e/{namespace}/evict"
    input_uri = write_input(cluster.bucket, prefix, records=EVICTED_RECORDS)
    output_uri = f"s3://{cluster.bucket}/{prefix}/output"
    spec = {
        "sharding": {"recordsPerShard": EVICTED_RECORDS},
        "retries": {"perShard": 0},
        "filter": {"parallelism": 1, "timeLimitSeconds": 30, **filter_spec},
    }
    cluster.apply(rewrite_job("code", input_uri, output_uri, **spec), namespace)
    core = client.CoreV1Api(config.new_client_from_config(str(cluster.kubeconfig)))

    def running_pod() -> str | None:
        pods = core.list_namespaced_pod(namespace, label_selector="batch.kubernetes.io/job-name")
        for pod in pods.items:
            if pod.status.phase == "Running":
                return str(pod.metadata.name)
        return None

    victim = wait_until("a filter pod to run", running_pod, every=0.2)
    seen = core.read_namespaced_pod(victim, namespace).metadata.resource_version
    eviction = client.V1Eviction(metadata=client.V1ObjectMeta(name=victim, namespace=namespace))
    core.create_namespaced_pod_eviction(victim, namespace, eviction)
    last = None
    events = watch.Watch().stream(  # from before the eviction: no change is missed
        core.list_namespaced_pod,
        namespace,
        field_selector=f"metadata.name={victim}",
        resource_version=seen,
        timeout_seconds=60,
    )
    for event in events:
        last = event["object"]
        if event["type"] == "DELETED":
            break
    assert last is not None and last.status.container_statuses, f"no final state of {victim}"
    (final,) = last.status.container_statuses
    assert final.state.terminated and final.state.terminated.exit_code == 143, final.state
    assert any(c.type == "DisruptionTarget" for c in last.status.conditions or [])

    status = wait_until(
        "the job to succeed", lambda: phase_in(cluster, namespace, "code", "Succeeded", "Failed")
    )
    assert status["phase"] == "Succeeded", status.get("message")
    (job,) = jobs(cluster, namespace)
    assert not job["status"].get("failedIndexes")
    pods = core.list_namespaced_pod(namespace, label_selector=f"job-name={job['metadata']['name']}")
    assert victim not in {p.metadata.name for p in pods.items}
    assert status["records"]["in"] == EVICTED_RECORDS  # the evicted attempt's count nowhere
    assert status["records"]["kept"] + status["records"]["rejected"] == EVICTED_RECORDS
    assert_status_matches_markers(status)
    return status


def scripted_model(body: dict[str, Any]) -> Reply:
    """Answers like a model following either code prompt: a fenced rewrite of the input."""
    last = str(body["messages"][-1]["content"])
    return Reply(
        f"Score: 8\n\nSuggestions:\n- fine\n\n```python\n{last}\n# rewritten\n```\n",
        prompt_tokens=20,
        completion_tokens=12,
    )
