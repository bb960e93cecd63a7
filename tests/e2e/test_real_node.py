"""The project's images under a real kubelet and containerd: the filter stage in the filter
image (a run, an eviction, garbage collection), the swallowcode example with its rewrite pods
in the CPU flavour of the rewrite image, and the operator installed with Helm.

The test cluster's real node (tests/cluster/node.py) runs pods in containers of the images
built by tests/cluster/images_build.sh, so the securityContext the operator sets (read-only
root, non-root uid, every capability dropped) is enforced by runc, and the image's user,
entry point and writable paths must fit it. The RewriteJob asks for that node through
spec.filter.nodeSelector and tolerations, and for hostNetwork through its podTemplate (the S3
server listens on the host's loopback, which bridged pods cannot reach).
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from palimpsest import runtime
from palimpsest.document import read_document
from palimpsest.storage import S3Settings, S3Store
from tests.cluster import clusterctl, node
from tests.cluster.fixtures import Cluster
from tests.e2e.rewritejobs import (
    Operator,
    assert_status_matches_markers,
    failed_pod_logs,
    jobs,
    marker_totals,
    phase_in,
    rewrite_job,
    run_with_an_eviction,
    s3,
    write_input,
)
from tests.support.invariant import check_invariant
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "tests" / "cluster" / "images_build.sh"
CHART = REPO / "charts" / "palimpsest"
EXAMPLES = REPO / "manifests" / "examples"
ON_THE_NODE: dict[str, Any] = {
    "nodeSelector": {"palimpsest.dev/pool": "cpu", "kubernetes.io/hostname": node.NAME},
    "tolerations": [node.TOLERATION],
    "podTemplate": {"spec": {"hostNetwork": True}},
}
PROBE = f"""
import json, os
out = {{"uid": os.getuid(), "gid": os.getgid()}}
for path in ("/", "{runtime.TMP_DIR}", "{runtime.CACHE_DIR}"):
    try:
        with open(os.path.join(path, "probe"), "w") as handle:
            handle.write("x")
        out[path] = "writable"
    except OSError as error:
        out[path] = error.strerror
status = open("/proc/self/status").read().splitlines()
out["CapEff"] = [line.split()[1] for line in status if line.startswith("CapEff")][0]
with open("/dev/termination-log", "w") as handle:
    json.dump(out, handle)
"""


def image_on_the_node(image: str) -> str:
    """Build one of images/ (or take it from the cache), import it into the node; its tag."""
    started = time.monotonic()
    out = subprocess.run(
        ["bash", str(BUILD), image], check=True, capture_output=True, text=True, timeout=1800
    ).stdout
    tag, archive = out.split()[-2:]
    node.import_image(clusterctl.DEFAULT_LAYOUT.node, Path(archive))
    print(f"{image} image ready on {node.NAME} in {time.monotonic() - started:.1f}s")
    return tag


@pytest.fixture(scope="module")
def filter_image(k8s_cluster: Cluster) -> str:
    return image_on_the_node("filter")


@pytest.fixture(scope="module")
def operator_image(k8s_cluster: Cluster) -> str:
    return image_on_the_node("operator")


@pytest.fixture(scope="module")
def rewrite_image(k8s_cluster: Cluster) -> str:
    """The rewrite image built on the CPU build of vLLM (images_build.sh rewrite-cpu)."""
    return image_on_the_node("rewrite-cpu")


@pytest.fixture()
def node_gpu(k8s_cluster: Cluster) -> Iterator[None]:
    """The real node offers one `nvidia.com/gpu` (an extended resource added to its status),
    so a rewrite pod asks for a GPU as on a GPU node and runs vLLM's CPU build there."""
    path = "/status/capacity/nvidia.com~1gpu"

    def patch(operation: dict[str, Any]) -> None:
        k8s_cluster.kubectl(
            "patch", "node", node.NAME, "--subresource=status", "--type=json",
            "-p", json.dumps([operation]),
        )  # fmt: skip

    patch({"op": "add", "path": path, "value": "1"})
    try:
        yield
    finally:
        patch({"op": "remove", "path": path})


@pytest.fixture()
def helm_release(k8s_cluster: Cluster, operator_image: str, tmp_path: Path) -> Iterator[str]:
    """The chart installed with its operator in the operator image on the real node, watching
    a fresh namespace (which has the S3 Secret); yields that namespace."""
    suffix = uuid.uuid4().hex[:6]
    system, watched, name = f"pal-system-{suffix}", f"pal-jobs-{suffix}", f"node-{suffix}"
    k8s_cluster.s3_namespace(watched)
    repository, tag = operator_image.rsplit(":", 1)
    api = urllib.parse.urlparse(k8s_cluster.info.api_server)
    values = {
        "image": {"repository": repository, "tag": tag},
        "watchNamespaces": [watched],
        # The API server listens on the host's loopback only; no Service IP routes here.
        "hostNetwork": True,
        "operator": {
            "tickSeconds": 2,
            "metricsPort": 0,
            "livenessPort": 0,
            "extraEnv": [
                {"name": "KUBERNETES_SERVICE_HOST", "value": api.hostname},
                {"name": "KUBERNETES_SERVICE_PORT", "value": str(api.port)},
            ],
        },
        "nodeSelector": {"kubernetes.io/hostname": node.NAME},
        "tolerations": [node.TOLERATION],
    }
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    release = ["install", name, str(CHART), "--namespace", system, "--create-namespace"]
    try:
        k8s_cluster.helm(*release, "--values", str(values_file), "--wait", "--timeout", "3m")
        yield watched
    finally:
        k8s_cluster.kubectl(
            "delete", "rwj", "--all", "-n", watched, "--timeout=60s", check=False, timeout=90
        )
        k8s_cluster.helm("uninstall", name, "--namespace", system, "--wait", check=False)
        for namespace in (watched, system):
            k8s_cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def terminated(cluster: Cluster, namespace: str, pod: str) -> dict[str, Any] | None:
    body = json.loads(cluster.kubectl("get", "pod", pod, "-n", namespace, "-o", "json").stdout)
    statuses = body["status"].get("containerStatuses") or [{}]
    state: dict[str, Any] | None = statuses[0].get("state", {}).get("terminated")
    return state


def run_filter_job(cluster: Cluster, namespace: str, image: str) -> dict[str, Any]:
    """A filter-only RewriteJob over 8 records placed on the real node; its final status."""
    prefix = f"e2e/{namespace}/real-node"
    input_uri = write_input(cluster.bucket, prefix, records=8)
    output_uri = f"s3://{cluster.bucket}/{prefix}/output"
    spec = {"filter": {"parallelism": 2, "image": image, **ON_THE_NODE}}
    cluster.apply(rewrite_job("code", input_uri, output_uri, **spec), namespace)
    status: dict[str, Any] = wait_until(
        "the job on the real node to finish",
        lambda: phase_in(cluster, namespace, "code", "Succeeded", "Failed"),
        timeout=300,
    )
    assert status["phase"] == "Succeeded", status.get("message")
    assert status["records"] == {"in": 8, "kept": 6, "rejected": 2}
    pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)
    assert pods["items"] and {p["spec"]["nodeName"] for p in pods["items"]} == {node.NAME}
    return status


def test_filter_stage_runs_in_its_image_on_the_real_node_under_the_pod_security_context(
    k8s_cluster: Cluster,
    namespace: str,
    operator: Operator,
    filter_image: str,
) -> None:
    status = run_filter_job(k8s_cluster, namespace, filter_image)
    runtime_version = k8s_cluster.kubectl(
        "get", "node", node.NAME, "-o", "jsonpath={.status.nodeInfo.containerRuntimeVersion}"
    ).stdout
    assert runtime_version.startswith("containerd://")
    # Every input record ends in the output or the rejects, and every listed part exists.
    stage_uri = status["stages"][0]["uri"]
    assert marker_totals(stage_uri)["in"] == 8
    bucket, _, key = stage_uri.removeprefix("s3://").partition("/")
    markers = s3().list_objects_v2(Bucket=bucket, Prefix=f"{key}/_markers/")["Contents"]
    assert len(markers) == 2
    for item in markers:
        marker = json.loads(s3().get_object(Bucket=bucket, Key=item["Key"])["Body"].read())
        listed = [part for parts in marker["parts"].values() for part in parts]
        assert sum(part["records"] for part in listed) == 4
        for part in listed:
            part_bucket, _, part_key = part["uri"].removeprefix("s3://").partition("/")
            head = s3().head_object(Bucket=part_bucket, Key=part_key)
            assert head["ContentLength"] == part["bytes"]
    assert_security_context_enforced(k8s_cluster, namespace)


def assert_security_context_enforced(cluster: Cluster, namespace: str) -> None:
    """The filter Job's own pod template, with a probe as the command, on the same node."""
    (job,) = jobs(cluster, namespace)
    template = job["spec"]["template"]
    container = template["spec"]["containers"][0]
    container.update(command=["python", "-c", PROBE], args=[])
    container["terminationMessagePolicy"] = "File"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "probe"},
        "spec": {**template["spec"], "restartPolicy": "Never"},
    }
    cluster.apply(yaml.safe_dump(pod), namespace)
    state = wait_until(
        "the probe pod to finish", lambda: terminated(cluster, namespace, "probe"), 120
    )
    assert state["exitCode"] == 0, state
    seen = json.loads(state["message"])
    assert (seen["uid"], seen["gid"]) == (runtime.RUN_AS_UID, runtime.RUN_AS_UID)
    assert seen["/"] == "Read-only file system"
    assert seen[runtime.TMP_DIR] == seen[runtime.CACHE_DIR] == "writable"
    assert seen["CapEff"] == "0000000000000000"


def test_operator_installed_with_helm_runs_in_its_image_on_the_real_node(
    k8s_cluster: Cluster, helm_release: str, filter_image: str
) -> None:
    pods = json.loads(
        k8s_cluster.kubectl(
            "get", "pods", "-A", "-l", "app.kubernetes.io/component=operator", "-o", "json"
        ).stdout
    )["items"]
    (pod,) = [p for p in pods if p["metadata"]["namespace"].startswith("pal-system-")]
    assert pod["spec"]["nodeName"] == node.NAME and pod["status"]["phase"] == "Running"
    assert pod["spec"]["securityContext"]["runAsUser"] == runtime.RUN_AS_UID
    run_filter_job(k8s_cluster, helm_release, filter_image)
    # The API server reaches the node's kubelet at its InternalIP: logs and exec work.
    name, namespace = pod["metadata"]["name"], pod["metadata"]["namespace"]
    logs = k8s_cluster.kubectl("logs", name, "-n", namespace).stdout
    assert "RewriteJob" in logs or "kopf" in logs.lower(), logs[-2000:]
    whoami = k8s_cluster.kubectl("exec", name, "-n", namespace, "--", "id", "-u").stdout
    assert whoami.strip() == str(runtime.RUN_AS_UID)


def swallowcode_example(cluster: Cluster, prefix: str, images: dict[str, str]) -> dict[str, Any]:
    """manifests/examples/swallowcode.yaml as shipped, fitted to this machine: the test
    bucket, 8 records, the tiny model from s3:// on the CPU build of vLLM, every pod on the
    real node in the images given, and no Kueue queue or priority class."""
    body: dict[str, Any] = yaml.safe_load((EXAMPLES / "swallowcode.yaml").read_text())
    spec = body["spec"]
    spec["input"]["uri"] = write_input(cluster.bucket, prefix, records=8)
    spec["output"]["uri"] = f"s3://{cluster.bucket}/{prefix}/output"
    spec["storage"] = yaml.safe_load(rewrite_job("x", "s3://a/", "s3://b/"))["spec"]["storage"]
    spec["sharding"]["recordsPerShard"] = 4
    spec["filter"].update(parallelism=2, resources={"cpu": "1"}, image=images["filter"])
    spec["filter"].update(ON_THE_NODE)
    rewrite = spec["rewrite"]
    rewrite["engine"].update(
        model=f"s3://{cluster.bucket}/{prefix}/model",
        tensorParallelSize=1,
        maxModelLen=2048,
        dtype="float32",
        engineArgs={"enforce_eager": True, "max_num_seqs": 8},
    )
    for gpu_only in ("revision", "gpuMemoryUtilization"):
        rewrite["engine"].pop(gpu_only)
    rewrite["sampling"]["maxTokens"] = 24
    rewrite.update(parallelism=1, shardsPerPod=2, image=images["rewrite"], **ON_THE_NODE)
    rewrite["tolerations"] = [node.TOLERATION, {"key": "nvidia.com/gpu", "operator": "Exists"}]
    rewrite.pop("priorityClassName")
    spec.pop("queueName")
    return body


def test_swallowcode_example_runs_its_stages_in_their_images_on_the_real_node(
    k8s_cluster: Cluster,
    namespace: str,
    operator: Operator,
    filter_image: str,
    rewrite_image: str,
    node_gpu: None,
    tiny_model: Path,
) -> None:
    """filter -> SGCR -> SCOR, each pod a container of the project's image under the pod
    security context, vLLM loading the tiny model's weights from S3."""
    prefix = f"e2e/{namespace}/swallowcode"
    for path in sorted(tiny_model.iterdir()):
        s3().upload_file(str(path), k8s_cluster.bucket, f"{prefix}/model/{path.name}")
    body = swallowcode_example(
        k8s_cluster, prefix, {"filter": filter_image, "rewrite": rewrite_image}
    )
    name = body["metadata"]["name"]
    k8s_cluster.apply(yaml.safe_dump(body), namespace)
    status: dict[str, Any] = wait_until(
        "the swallowcode example to finish",
        lambda: phase_in(k8s_cluster, namespace, name, "Succeeded", "Failed"),
        timeout=900,
        every=2,
    )
    if status["phase"] != "Succeeded":
        pytest.fail(f"{status.get('message')}\n{failed_pod_logs(k8s_cluster, namespace)}")
    assert [s["kind"] for s in status["stages"]] == ["filter", "sgcr", "scor"]
    assert status["records"]["in"] == 8
    assert status["stages"][0]["records"] == {"in": 8, "kept": 6, "rejected": 2}
    assert status["stages"][1]["tokens"]["generated"] > 0  # the model ran on every kept record
    assert_status_matches_markers(status)
    store = S3Store(S3Settings(endpoint_url=k8s_cluster.s3_endpoint, region="us-east-1"))
    refs = read_document(store, status["jobDocument"]).stage_refs()
    ids = [f"r0-{i}" for i in range(8)]  # write_input's ids
    check_invariant(store, body["spec"]["output"]["uri"], refs, 2, ids)
    pods = json.loads(k8s_cluster.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)
    images = {p["spec"]["containers"][0]["image"] for p in pods["items"]}
    assert {p["spec"]["nodeName"] for p in pods["items"]} == {node.NAME}
    assert images == {filter_image, rewrite_image}


def node_containers(namespace: str) -> list[str]:
    """The containers the node's containerd holds for pods of `namespace` (sandboxes too)."""
    label = f'labels."io.kubernetes.pod.namespace"=={namespace}'
    result = node.ctr(clusterctl.DEFAULT_LAYOUT.node, "containers", "ls", "-q", label, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_an_eviction_on_the_real_node_spends_no_retry_and_deletion_collects_the_pods(
    k8s_cluster: Cluster, namespace: str, operator: Operator, filter_image: str
) -> None:
    """The kubelet stops the evicted container and the Job's podFailurePolicy ignores the
    disruption; deleting the RewriteJob then deletes its Jobs and their pods through owner
    references, and the node removes their containers."""
    run_with_an_eviction(k8s_cluster, namespace, {"image": filter_image, **ON_THE_NODE})
    pods = json.loads(k8s_cluster.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)
    assert pods["items"] and {p["spec"]["nodeName"] for p in pods["items"]} == {node.NAME}
    assert node_containers(namespace)

    k8s_cluster.kubectl("delete", "rwj", "code", "-n", namespace, "--timeout=60s", timeout=90)
    wait_until(
        "the Jobs and pods to be collected",
        lambda: (
            not jobs(k8s_cluster, namespace)
            and not k8s_cluster.kubectl("get", "pods", "-n", namespace, "-o", "name").stdout.split()
        ),
        timeout=60,
    )
    wait_until("the node to remove their containers", lambda: not node_containers(namespace), 120)
