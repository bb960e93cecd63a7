"""Installing the product as users do: `helm install` (the operator then runs as a pod with
the chart's service account and RBAC) and `kubectl apply -k manifests/`, then a RewriteJob
applied after the install runs to Succeeded."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from tests.cluster.fixtures import Cluster
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "palimpsest"
GOOD = (
    '"""Module."""\n\n\ndef add(left: int, right: int) -> int:\n'
    '    """Add."""\n    return left + right\n'
)


@pytest.fixture()
def release(k8s_cluster: Cluster) -> Iterator[tuple[str, str]]:
    """A Helm release of the chart whose operator watches one fresh namespace."""
    suffix = uuid.uuid4().hex[:6]
    system, jobs_ns = f"pal-system-{suffix}", f"pal-jobs-{suffix}"
    k8s_cluster.s3_namespace(jobs_ns)
    name = f"rel-{suffix}"
    k8s_cluster.helm(
        "install",
        name,
        str(CHART),
        "--namespace",
        system,
        "--create-namespace",
        "--set",
        f"watchNamespaces={{{jobs_ns}}}",
        "--set",
        "operator.tickSeconds=2",
        "--set",
        "operator.metricsPort=0",
        "--set",
        "operator.livenessPort=0",
        "--wait",
        "--timeout",
        "3m",
    )
    try:
        yield system, jobs_ns
    finally:
        k8s_cluster.kubectl("delete", "rwj", "--all", "-n", jobs_ns, "--wait=false", check=False)
        k8s_cluster.helm("uninstall", name, "--namespace", system, check=False)
        for ns in (jobs_ns, system):
            k8s_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def test_helm_lint_and_template(k8s_cluster: Cluster) -> None:
    k8s_cluster.helm("lint", str(CHART), "--strict")
    rendered = k8s_cluster.helm(
        "template", "x", str(CHART), "--set", "metrics.serviceMonitor.enabled=true"
    ).stdout
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(rendered) if d)
    assert kinds == sorted(
        [
            "ServiceAccount",
            "ConfigMap",
            "ClusterRole",
            "ClusterRoleBinding",
            # Secrets are read through a role of their own (trust.secrets: any, the default).
            "ClusterRole",
            "ClusterRoleBinding",
            "Service",
            "Deployment",
            "ServiceMonitor",
        ]
    )
    bad = k8s_cluster.helm(
        "template", "x", str(CHART), "--set", "operator.tickSeconds=-1", check=False
    )
    assert bad.returncode != 0 and "tickSeconds" in bad.stderr


def test_a_rewrite_job_applied_after_helm_install_succeeds(
    k8s_cluster: Cluster, release: tuple[str, str]
) -> None:
    system, jobs_ns = release
    pods = json.loads(k8s_cluster.kubectl("get", "pods", "-n", system, "-o", "json").stdout)[
        "items"
    ]
    assert [p["status"]["phase"] for p in pods] == ["Running"]
    bucket = k8s_cluster.bucket
    lines = [
        json.dumps({"id": f"r{i}", "text": GOOD if i % 2 else "def broken(:\n"}) for i in range(6)
    ]
    boto3.client("s3").put_object(
        Bucket=bucket, Key=f"{jobs_ns}/in/a.jsonl", Body="\n".join(lines) + "\n"
    )
    job = {
        "apiVersion": "palimpsest.dev/v1alpha1",
        "kind": "RewriteJob",
        "metadata": {"name": "after-helm"},
        "spec": {
            "recipe": "swallowcode",
            "stages": ["filter"],
            "input": {"uri": f"s3://{bucket}/{jobs_ns}/in/"},
            "output": {"uri": f"s3://{bucket}/{jobs_ns}/out/"},
            "storage": {
                "endpoint": os.environ["AWS_ENDPOINT_URL_S3"],
                "region": "us-east-1",
                "secretRef": {"name": "s3-creds"},
            },
            "sharding": {"recordsPerShard": 3},
            "filter": {"image": "palimpsest/filter:test", "timeLimitSeconds": 30},
        },
    }
    k8s_cluster.apply(yaml.safe_dump(job), jobs_ns)

    def finished() -> dict[str, Any] | None:
        body = json.loads(
            k8s_cluster.kubectl("get", "rwj", "after-helm", "-n", jobs_ns, "-o", "json").stdout
        )
        status = body.get("status") or {}
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    status = wait_until("the RewriteJob to finish", finished, timeout=300)
    assert status["phase"] == "Succeeded", status
    assert status["records"] == {"in": 6, "kept": 3, "rejected": 3}


def test_kustomize_install_and_examples_pass_server_validation(k8s_cluster: Cluster) -> None:
    # A server dry run creates nothing, so the namespaced objects need their namespace first.
    namespace = k8s_cluster.kubectl("get", "namespace", "palimpsest-system", check=False)
    if namespace.returncode != 0:
        k8s_cluster.kubectl("create", "namespace", "palimpsest-system")
    applied = k8s_cluster.kubectl("apply", "-k", str(REPO / "manifests"), "--dry-run=server")
    assert "deployment.apps/palimpsest-operator" in applied.stdout
    k8s_cluster.kubectl("apply", "-f", str(REPO / "manifests" / "crd"))
    k8s_cluster.kubectl("wait", "--for=condition=Established", "crd/rewritejobs.palimpsest.dev")
    for example in ("swallowcode", "swallowmath", "instruct"):
        path = REPO / "manifests" / "examples" / f"{example}.yaml"
        out = k8s_cluster.kubectl("apply", "-f", str(path), "-n", "default", "--dry-run=server")
        assert "created (server dry run)" in out.stdout
