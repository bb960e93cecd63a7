"""Smoke tests of the test cluster: the Kubernetes behaviour the operator relies on is real.

The operator's tests trust this harness to behave like a cluster: Indexed Jobs complete,
evictions are disruptions a podFailurePolicy can ignore, GPU pods land only on the tainted
GPU pool, owners garbage-collect their Jobs, helm works against it, and pods get a token
for their service account. Each test runs in its own namespace.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from tests.cluster.fixtures import Cluster
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

TEST_IMAGE = "palimpsest/smoke-test:latest"
GPU_NODE = "palimpsest-gpu-0"
CPU_NODE = "palimpsest-cpu-0"


@pytest.fixture()
def namespace(k8s_cluster: Cluster) -> Iterator[str]:
    name = f"smoke-{uuid.uuid4().hex[:8]}"
    k8s_cluster.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        k8s_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def api(k8s_cluster: Cluster) -> client.ApiClient:
    return config.new_client_from_config(str(k8s_cluster.kubeconfig))


def get_json(cluster: Cluster, *args: str) -> Any:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def job_condition(cluster: Cluster, namespace: str, job: str) -> str | None:
    status = get_json(cluster, "job", job, "-n", namespace).get("status", {})
    for condition in status.get("conditions", []):
        if condition["type"] in ("Complete", "Failed") and condition["status"] == "True":
            return str(condition["type"])
    return None


def job_pods(cluster: Cluster, namespace: str, job: str) -> list[dict[str, Any]]:
    pods: list[dict[str, Any]] = get_json(
        cluster, "pods", "-n", namespace, "-l", f"job-name={job}"
    )["items"]
    return pods


def test_server_reports_pinned_version_and_pools(k8s_cluster: Cluster) -> None:
    version = json.loads(k8s_cluster.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == k8s_cluster.info.kubernetes_version
    nodes = {node["metadata"]["name"]: node for node in get_json(k8s_cluster, "nodes")["items"]}
    assert nodes[CPU_NODE]["metadata"]["labels"]["palimpsest.dev/pool"] == "cpu"
    gpu = nodes[GPU_NODE]
    assert gpu["metadata"]["labels"]["palimpsest.dev/pool"] == "gpu"
    assert gpu["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"} in gpu["spec"][
        "taints"
    ]
    lease = get_json(k8s_cluster, "lease", GPU_NODE, "-n", "kube-node-lease")
    assert lease["spec"]["holderIdentity"] == GPU_NODE


INDEXED_JOB = """
apiVersion: batch/v1
kind: Job
metadata: {name: write-index}
spec:
  completions: 3
  parallelism: 3
  completionMode: Indexed
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: worker
        image: %(image)s
        command: [python, -c]
        args:
        - |
          import os, pathlib
          out = pathlib.Path(os.environ["OUT_DIR"]) / os.environ["INDEX"]
          out.write_text(f"{os.environ['INDEX']} {os.environ['GREETING']} {os.environ['TOKEN']}")
          print("wrote", out)
        env:
        - {name: OUT_DIR, value: "%(out)s"}
        - name: INDEX
          valueFrom:
            fieldRef:
              fieldPath: metadata.annotations['batch.kubernetes.io/job-completion-index']
        - name: GREETING
          valueFrom: {configMapKeyRef: {name: smoke-settings, key: greeting}}
        - name: TOKEN
          valueFrom: {secretKeyRef: {name: smoke-secret, key: token}}
"""


def test_indexed_job_runs_to_complete(k8s_cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    k8s_cluster.kubectl(
        "create", "configmap", "smoke-settings", "-n", namespace, "--from-literal=greeting=hello"
    )
    k8s_cluster.kubectl(
        "create",
        "secret",
        "generic",
        "smoke-secret",
        "-n",
        namespace,
        "--from-literal=token=s3cr3t",
    )
    k8s_cluster.apply(INDEXED_JOB % {"image": TEST_IMAGE, "out": tmp_path}, namespace)

    assert (
        wait_until("job complete", lambda: job_condition(k8s_cluster, namespace, "write-index"))
        == "Complete"
    )

    assert sorted(path.name for path in tmp_path.iterdir()) == ["0", "1", "2"]
    for index in range(3):
        assert (tmp_path / str(index)).read_text() == f"{index} hello s3cr3t"
    pods = job_pods(k8s_cluster, namespace, "write-index")
    assert {pod["status"]["phase"] for pod in pods} == {"Succeeded"}
    terminated = pods[0]["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (0, "Completed")
    logs = k8s_cluster.kubectl("logs", "-n", namespace, pods[0]["metadata"]["name"]).stdout
    assert "wrote" in logs


EVICTABLE_JOB = """
apiVersion: batch/v1
kind: Job
metadata: {name: evictable}
spec:
  completions: 1
  parallelism: 1
  completionMode: Indexed
  backoffLimitPerIndex: 0
  podFailurePolicy:
    rules:
    - action: Ignore
      onPodConditions: [{type: DisruptionTarget}]
    - action: FailIndex
      onExitCodes: {operator: NotIn, values: [0]}
  template:
    spec:
      restartPolicy: Never
      terminationGracePeriodSeconds: 5
      containers:
      - name: worker
        image: %(image)s
        command: [sh, -c]
        args: ['if [ -e "$MARK" ]; then exit 0; fi; touch "$MARK"; exec sleep 300']
        env: [{name: MARK, value: "%(mark)s"}]
"""


def test_evicted_pod_is_replaced_without_counting_a_failure(
    k8s_cluster: Cluster, namespace: str, api: client.ApiClient, tmp_path: Path
) -> None:
    mark = tmp_path / "first-run-started"
    k8s_cluster.apply(EVICTABLE_JOB % {"image": TEST_IMAGE, "mark": mark}, namespace)

    def running_pod() -> str | None:
        pods = job_pods(k8s_cluster, namespace, "evictable")
        running = [p for p in pods if p["status"].get("phase") == "Running"]
        return str(running[0]["metadata"]["name"]) if running and mark.exists() else None

    first = wait_until("the first pod running", running_pod)
    eviction = client.V1Eviction(metadata=client.V1ObjectMeta(name=first, namespace=namespace))
    client.CoreV1Api(api).create_namespaced_pod_eviction(first, namespace, eviction)

    assert (
        wait_until("job finished", lambda: job_condition(k8s_cluster, namespace, "evictable"))
        == "Complete"
    )
    status = get_json(k8s_cluster, "job", "evictable", "-n", namespace)["status"]
    assert status.get("failed", 0) == 0
    assert not status.get("failedIndexes")
    pods = job_pods(k8s_cluster, namespace, "evictable")
    assert first not in {pod["metadata"]["name"] for pod in pods}
    replacement = [pod for pod in pods if pod["status"]["phase"] == "Succeeded"]
    assert len(replacement) == 1
    annotations = replacement[0]["metadata"]["annotations"]
    assert annotations.get("batch.kubernetes.io/job-index-failure-count", "0") == "0"


def gpu_pod(name: str, tolerate: bool, gpus: int = 1) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [
            {
                "name": "main",
                "image": TEST_IMAGE,
                "command": ["true"],
                "resources": {"limits": {"nvidia.com/gpu": str(gpus)}} if gpus else {},
            }
        ],
    }
    if tolerate:
        spec["tolerations"] = [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def test_gpu_pods_land_only_on_the_gpu_node_with_the_toleration(
    k8s_cluster: Cluster, namespace: str
) -> None:
    pods = [
        gpu_pod("gpu-tolerated", True),
        gpu_pod("gpu-untolerated", False),
        gpu_pod("cpu-only", False, gpus=0),
    ]
    k8s_cluster.apply(yaml.safe_dump_all(pods), namespace)

    def node_of(name: str) -> str | None:
        pod = get_json(k8s_cluster, "pod", name, "-n", namespace)
        return pod["spec"].get("nodeName") if pod["status"].get("phase") == "Succeeded" else None

    assert wait_until("the tolerated GPU pod to run", lambda: node_of("gpu-tolerated")) == GPU_NODE
    assert wait_until("the CPU pod to run", lambda: node_of("cpu-only")) == CPU_NODE

    def unschedulable_message() -> str | None:
        pod = get_json(k8s_cluster, "pod", "gpu-untolerated", "-n", namespace)
        for condition in pod["status"].get("conditions", []):
            if condition["type"] == "PodScheduled" and condition.get("reason") == "Unschedulable":
                return str(condition.get("message", ""))
        return None

    message = wait_until("the untolerated GPU pod to be unschedulable", unschedulable_message)
    assert "nvidia.com/gpu" in message
    assert not get_json(k8s_cluster, "pod", "gpu-untolerated", "-n", namespace)["spec"].get(
        "nodeName"
    )


OWNED_JOB = """
apiVersion: batch/v1
kind: Job
metadata:
  name: owned-%(index)d
  ownerReferences:
  - {apiVersion: v1, kind: ConfigMap, name: owner, uid: "%(uid)s"}
spec:
  template:
    spec:
      restartPolicy: Never
      containers:
      - {name: main, image: %(image)s, command: [sleep, "300"]}
"""


def test_deleting_the_owner_garbage_collects_its_jobs(k8s_cluster: Cluster, namespace: str) -> None:
    k8s_cluster.kubectl("create", "configmap", "owner", "-n", namespace)
    uid = get_json(k8s_cluster, "configmap", "owner", "-n", namespace)["metadata"]["uid"]
    jobs = "---".join(OWNED_JOB % {"index": i, "uid": uid, "image": TEST_IMAGE} for i in range(2))
    k8s_cluster.apply(jobs, namespace)

    def pods_running() -> bool:
        pods = get_json(k8s_cluster, "pods", "-n", namespace)["items"]
        return len(pods) == 2 and all(pod["status"].get("phase") == "Running" for pod in pods)

    wait_until("the owned jobs' pods to run", pods_running)
    k8s_cluster.kubectl("delete", "configmap", "owner", "-n", namespace)

    wait_until(
        "jobs to be collected", lambda: not get_json(k8s_cluster, "jobs", "-n", namespace)["items"]
    )
    wait_until(
        "pods to be collected", lambda: not get_json(k8s_cluster, "pods", "-n", namespace)["items"]
    )


def test_service_account_token_and_termination_message(
    k8s_cluster: Cluster, namespace: str
) -> None:
    script = (
        "from kubernetes import client, config\n"
        "config.load_kube_config()\n"
        "review = client.AuthenticationV1Api().create_self_subject_review("
        "{'apiVersion': 'authentication.k8s.io/v1', 'kind': 'SelfSubjectReview'})\n"
        "open('/dev/termination-log', 'w').write(review.status.user_info.username)\n"
        "raise SystemExit(3)\n"
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "whoami"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {"name": "main", "image": TEST_IMAGE, "command": ["python", "-c", script]}
            ],
        },
    }
    k8s_cluster.apply(json.dumps(pod), namespace)

    def terminated() -> dict[str, Any] | None:
        status = get_json(k8s_cluster, "pod", "whoami", "-n", namespace)["status"]
        if status.get("phase") != "Failed":
            return None
        state: dict[str, Any] = status["containerStatuses"][0]["state"]["terminated"]
        return state

    state = wait_until("the pod to fail", terminated)
    assert state["exitCode"] == 3
    assert state["message"] == f"system:serviceaccount:{namespace}:default"


CHART = {
    "Chart.yaml": "apiVersion: v2\nname: smoke\nversion: 0.1.0\nappVersion: '1.0'\n",
    "values.yaml": "greeting: hello\n",
    "templates/configmap.yaml": (
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-settings\n"
        "data:\n  greeting: {{ .Values.greeting | quote }}\n"
        "  kubeVersion: {{ .Capabilities.KubeVersion.Version | quote }}\n"
    ),
}


def test_helm_lint_template_and_install(
    k8s_cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    chart = tmp_path / "smoke"
    for name, text in CHART.items():
        (chart / name).parent.mkdir(parents=True, exist_ok=True)
        (chart / name).write_text(text)

    assert "0 chart(s) failed" in k8s_cluster.helm("lint", str(chart)).stdout
    rendered = yaml.safe_load(
        k8s_cluster.helm("template", "demo", str(chart), "--set", "greeting=hi").stdout
    )
    assert rendered["metadata"]["name"] == "demo-settings"
    assert rendered["data"]["greeting"] == "hi"

    k8s_cluster.helm("install", "demo", str(chart), "-n", namespace, "--wait", "--timeout", "60s")
    installed = get_json(k8s_cluster, "configmap", "demo-settings", "-n", namespace)
    assert installed["data"]["kubeVersion"] == k8s_cluster.info.kubernetes_version
