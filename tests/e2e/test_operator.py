"""The operator end to end on the test cluster: `kubectl apply` of a RewriteJob over S3 input.

The operator runs as a local process with the cluster's kubeconfig (as it would in its pod,
minus the image); worker pods run through the test kubelet against the loopback S3. Each test
gets its own namespace, its own operator watching it, and its own S3 prefix.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.fixtures import Cluster
from tests.e2e.rewritejobs import (
    LOGS,
    PROMPTS,
    Operator,
    assert_status_matches_markers,
    jobs,
    patch_spec,
    phase_in,
    rewrite_job,
    run_with_an_eviction,
    rwj,
    s3,
    scripted_model,
    write_input,
)
from tests.support.openai_server import ScriptedOpenAIServer
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STATUS_DUMP = LOGS / "e2e-rewritejob-status.yaml"


def assert_card_loads(status: dict[str, Any], tmp_path: Path, records: int) -> None:
    """The operator's dataset card, over the Parquet parts the worker pods wrote, loads with
    `datasets` (from a copy of the output folder) and counts the records the status does."""
    import datasets

    assert status["cardUri"] in status["message"]
    bucket, _, key = status["cardUri"].removeprefix("s3://").partition("/")
    prefix = key.rsplit("/", 1)[0] + "/"
    copy = tmp_path / "output"
    for page in s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            path = copy / obj["Key"].removeprefix(prefix)
            path.parent.mkdir(parents=True, exist_ok=True)
            s3().download_file(bucket, obj["Key"], str(path))
    body = (copy / "README.md").read_text()
    assert "part-*.parquet" in body and f"- records: {records}" in body
    loaded = datasets.load_dataset(str(copy), split="train", cache_dir=str(tmp_path / "cache"))
    assert len(loaded) == records and len(set(loaded["id"])) == records


def test_filter_job_runs_to_succeeded_with_counts_from_the_markers(
    k8s_cluster: Cluster, namespace: str, operator: Operator, tmp_path: Path
) -> None:
    prefix = f"e2e/{namespace}/filter"
    input_uri = write_input(k8s_cluster.bucket, prefix, records=12)
    output_uri = f"s3://{k8s_cluster.bucket}/{prefix}/output"
    output = {"uri": output_uri, "format": "parquet"}
    k8s_cluster.apply(rewrite_job("code", input_uri, output_uri, output=output), namespace)

    status = wait_until(
        "the job to succeed",
        lambda: phase_in(k8s_cluster, namespace, "code", "Succeeded", "Failed"),
    )
    assert status["phase"] == "Succeeded", status.get("message")
    assert status["plan"]["shards"] == 3 and status["progress"] == "100%"
    assert_card_loads(status, tmp_path, records=9)
    assert status["records"] == {"in": 12, "kept": 9, "rejected": 3}
    assert status["stages"][0]["topRejects"] == {"syntax_error": 3}
    assert_status_matches_markers(status)
    manifest_uri = status["manifestUri"]
    bucket, _, key = manifest_uri.removeprefix("s3://").partition("/")
    manifest = json.loads(s3().get_object(Bucket=bucket, Key=key)["Body"].read())
    assert manifest["records"] == 9

    (job,) = jobs(k8s_cluster, namespace)
    assert status["stageIds"]["filter"] in job["metadata"]["name"]
    assert job["spec"]["completions"] == 3

    printed = k8s_cluster.kubectl("get", "rwj", "code", "-n", namespace).stdout
    assert "Succeeded" in printed and "100%" in printed
    events = k8s_cluster.kubectl(
        "get",
        "events",
        "-n",
        namespace,
        "--field-selector",
        "involvedObject.name=code",
        "-o",
        "json",
    ).stdout
    assert {"Planned", "JobCreated", "StageSucceeded", "Succeeded"} <= {
        e["reason"] for e in json.loads(events)["items"]
    }
    assert operator.get("/healthz", operator.liveness_port)
    metrics = operator.get("/metrics", operator.metrics_port)
    assert f'palimpsest_records{{kind="kept",name="code",namespace="{namespace}"}} 9.0' in metrics
    STATUS_DUMP.parent.mkdir(parents=True, exist_ok=True)
    STATUS_DUMP.write_text(
        k8s_cluster.kubectl("get", "rwj", "code", "-n", namespace, "-o", "yaml").stdout
    )


INVALID = [
    ({"filter": {"minScore": 11}}, "spec.filter.minScore"),
    ({"recipe": "poetry"}, "spec.recipe"),
    (
        {
            "output": {"uri": "s3://palimpsest-test/same"},
            "input": {"uri": "s3://palimpsest-test/same"},
        },
        "output.uri must differ from input.uri",
    ),
    ({"stages": ["filter", "math"]}, "stages of recipe swallowcode"),
    ({"stages": ["filter", "sgcr"]}, "rewrite.engine is required"),
    (
        {"rewrite": {"engine": {"type": "openai", "model": "m"}}, "stages": None},
        "engine.baseURL is required",
    ),
]


@pytest.mark.parametrize(("spec", "message"), INVALID)
def test_invalid_specs_are_rejected_by_the_api_server(
    k8s_cluster: Cluster, namespace: str, spec: dict[str, Any], message: str
) -> None:
    body = yaml.safe_load(rewrite_job("bad", "s3://palimpsest-test/in", "s3://palimpsest-test/out"))
    for key, value in spec.items():
        if value is None:
            body["spec"].pop(key)
        else:
            body["spec"][key] = value
    result = k8s_cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(body), check=False
    )
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_input_is_immutable(k8s_cluster: Cluster, namespace: str) -> None:
    k8s_cluster.apply(
        rewrite_job("fixed", "s3://palimpsest-test/a", "s3://palimpsest-test/b", dryRun=True),
        namespace,
    )
    result = patch_spec(
        k8s_cluster, namespace, "fixed", {"input": {"uri": "s3://palimpsest-test/c"}}, check=False
    )
    assert result.returncode != 0 and "input is immutable" in result.stderr


def test_restart_mid_run_and_spec_edit_rerun(
    k8s_cluster: Cluster, namespace: str, operator: Operator
) -> None:
    prefix = f"e2e/{namespace}/restart"
    input_uri = write_input(k8s_cluster.bucket, prefix, records=16, files=2)
    output_uri = f"s3://{k8s_cluster.bucket}/{prefix}/output"
    k8s_cluster.apply(
        rewrite_job(
            "code",
            input_uri,
            output_uri,
            filter={"parallelism": 1, "image": "palimpsest/filter:test", "timeLimitSeconds": 30},
        ),
        namespace,
    )

    def some_counted() -> dict[str, Any] | None:
        status = phase_in(k8s_cluster, namespace, "code", "Filtering") or {}
        return status if status.get("shards", {}).get("succeeded", 0) >= 1 else None

    wait_until("the first shards to be counted", some_counted)
    operator.stop(signal.SIGKILL)  # a crash: no graceful shutdown
    time.sleep(3)
    operator.start()
    status = wait_until(
        "the job to succeed",
        lambda: phase_in(k8s_cluster, namespace, "code", "Succeeded", "Failed"),
    )
    assert status["phase"] == "Succeeded", status.get("message")
    assert len(jobs(k8s_cluster, namespace)) == 1  # no duplicate Job after the restart
    assert status["records"]["in"] == 16
    assert_status_matches_markers(status)
    first_id = status["stageIds"]["filter"]

    # a spec edit that changes the filter's settings runs the filter again under a new id
    patch_spec(k8s_cluster, namespace, "code", {"filter": {"minScore": 9.9}})

    def rerun_done() -> dict[str, Any] | None:
        status = phase_in(k8s_cluster, namespace, "code", "Succeeded", "Failed") or {}
        ok = status.get("stageIds", {}).get("filter") not in (None, first_id)
        return status if ok and status.get("observedGeneration") == 2 else None

    status = wait_until("the edited job to succeed", rerun_done)
    assert status["phase"] == "Succeeded"
    assert status["records"]["in"] == 16
    assert [s["id"] for s in status["stages"]] == [status["stageIds"]["filter"]]
    names = [
        j["metadata"]["name"]
        for j in jobs(k8s_cluster, namespace)
        if not j["metadata"].get("deletionTimestamp")
    ]
    assert names and all(status["stageIds"]["filter"] in n for n in names)
    assert_status_matches_markers(status)


def test_filter_and_rewrite_with_an_openai_engine(
    k8s_cluster: Cluster, namespace: str, operator: Operator
) -> None:
    """filter -> SGCR -> SCOR to Succeeded; then a sampling edit re-runs only the rewrite
    stages, a prompt ConfigMap edit re-runs only SCOR, and deleting the job deletes its Jobs."""
    server = ScriptedOpenAIServer()
    server.default = scripted_model
    prefix = f"e2e/{namespace}/rewrite"
    input_uri = write_input(k8s_cluster.bucket, prefix, records=8)
    output_uri = f"s3://{k8s_cluster.bucket}/{prefix}/output"
    prompts = {name: (PROMPTS / name).read_text() for name in ("code-sgcr.yaml", "code-scor.yaml")}
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "prompts"},
        "data": prompts,
    }
    k8s_cluster.apply(yaml.safe_dump(config_map), namespace)
    rewrite = {
        "image": "palimpsest/rewrite:test",
        "shardsPerPod": 2,
        "prompts": {"configMapName": "prompts"},
        "engine": {"type": "openai", "model": "scripted", "baseURL": ""},
    }
    with server.run():
        rewrite["engine"]["baseURL"] = server.base_url  # type: ignore[index]
        spec = {"stages": ["filter", "sgcr", "scor"], "rewrite": rewrite}
        k8s_cluster.apply(rewrite_job("code", input_uri, output_uri, **spec), namespace)
        status = wait_until(
            "the job to succeed",
            lambda: phase_in(k8s_cluster, namespace, "code", "Succeeded", "Failed"),
            timeout=300,
        )
        assert status["phase"] == "Succeeded", status.get("message")
        assert [s["kind"] for s in status["stages"]] == ["filter", "sgcr", "scor"]
        assert status["records"]["in"] == 8
        kept = status["stages"][0]["records"]["kept"]
        assert status["tokens"]["generated"] > 0
        assert_status_matches_markers(status)
        assert server.served() == 2 * kept
        STATUS_DUMP.with_name("e2e-rewritejob-rewrite-status.yaml").write_text(
            k8s_cluster.kubectl("get", "rwj", "code", "-n", namespace, "-o", "yaml").stdout
        )
        first = dict(status["stageIds"])
        filter_job = f"code-{first['filter']}"

        # a sampling edit changes both rewrite stages' ids; the filter is reused from S3
        rewrite["sampling"] = {"temperature": 0.5}
        k8s_cluster.apply(rewrite_job("code", input_uri, output_uri, **spec), namespace)
        status = wait_until(
            "the rewrite stages to run again",
            lambda: rerun_of(k8s_cluster, namespace, first, {"sgcr", "scor"}),
        )
        assert status["stageIds"]["filter"] == first["filter"]
        assert server.served() == 4 * kept
        assert_status_matches_markers(status)
        second = dict(status["stageIds"])
        names = {j["metadata"]["name"] for j in jobs(k8s_cluster, namespace)}
        assert filter_job in names  # not re-created: its name would be the same anyway
        filter_pods = k8s_cluster.kubectl(
            "get", "pods", "-n", namespace, "-l", f"job-name={filter_job}", "-o", "name"
        ).stdout.split()
        assert len(filter_pods) == 2  # one pod per shard, from the first run only

        # a prompt edit in the ConfigMap re-runs only SCOR
        sgcr_requests = count_sgcr(server)
        config_map["data"]["code-scor.yaml"] = prompts["code-scor.yaml"] + "\n# stricter\n"
        k8s_cluster.apply(yaml.safe_dump(config_map), namespace)
        status = wait_until(
            "SCOR to run again", lambda: rerun_of(k8s_cluster, namespace, second, {"scor"})
        )
        assert count_sgcr(server) == sgcr_requests
        assert server.served() == 5 * kept
        assert_status_matches_markers(status)

    k8s_cluster.kubectl("delete", "rwj", "code", "-n", namespace, "--timeout=60s")
    wait_until("its Jobs to be deleted", lambda: not jobs(k8s_cluster, namespace), timeout=60)


def rerun_of(
    cluster: Cluster, namespace: str, before: dict[str, str], changed: set[str]
) -> dict[str, Any] | None:
    """The status once exactly the `changed` stages have new ids and the job succeeded."""
    status = phase_in(cluster, namespace, "code", "Succeeded") or {}
    ids = status.get("stageIds", {})
    now_changed = {kind for kind, sid in ids.items() if before.get(kind) != sid}
    return status if ids and now_changed == changed else None


def count_sgcr(server: ScriptedOpenAIServer) -> int:
    return sum(
        1 for r in server.received if "reviewer" in str(r.body["messages"][0].get("content", ""))
    )


def test_evicted_pod_is_retried_without_burning_a_retry_or_duplicating(
    k8s_cluster: Cluster, namespace: str, operator: Operator
) -> None:
    run_with_an_eviction(k8s_cluster, namespace, {"image": "palimpsest/filter:test"})


def test_suspend_stops_the_pods_and_resume_finishes(
    k8s_cluster: Cluster, namespace: str, operator: Operator
) -> None:
    prefix = f"e2e/{namespace}/suspend"
    input_uri = write_input(k8s_cluster.bucket, prefix, records=16)
    output_uri = f"s3://{k8s_cluster.bucket}/{prefix}/output"
    k8s_cluster.apply(rewrite_job("code", input_uri, output_uri, suspend=True), namespace)
    status = wait_until(
        "the job to be suspended", lambda: phase_in(k8s_cluster, namespace, "code", "Suspended")
    )
    assert {c["type"]: c["status"] for c in status["conditions"]}["Suspended"] == "True"
    (job,) = jobs(k8s_cluster, namespace)
    assert job["spec"]["suspend"] is True
    time.sleep(3)
    pods = k8s_cluster.kubectl("get", "pods", "-n", namespace, "-o", "name").stdout.split()
    assert pods == []  # a suspended Job starts no pods

    patch_spec(k8s_cluster, namespace, "code", {"suspend": False})
    status = wait_until(
        "the job to succeed",
        lambda: phase_in(k8s_cluster, namespace, "code", "Succeeded", "Failed"),
    )
    assert status["phase"] == "Succeeded", status.get("message")
    assert status["records"]["in"] == 16
    assert_status_matches_markers(status)


def math_records(count: int) -> list[dict[str, str]]:
    return [
        {
            "id": f"m{i}",
            "text": f"Question {i}: what is {i} + {i * 3}? Posted 2024-01-0{i % 9 + 1}.",
        }
        for i in range(count)
    ]


@pytest.mark.skipif(
    not os.environ.get("PALIMPSEST_VLLM_ENV"),
    reason="rewrite pods need the vLLM env: start the test cluster with PALIMPSEST_VLLM_ENV set",
)
def test_swallowmath_on_the_tiny_vllm_model(
    k8s_cluster: Cluster, namespace: str, operator: Operator, tiny_model: Path
) -> None:
    """The math stage as a GPU-pool Job: vLLM loaded once per pod over a block of shards."""
    prefix = f"e2e/{namespace}/vllm"
    lines = [json.dumps(r) for r in math_records(6)]
    s3().put_object(
        Bucket=k8s_cluster.bucket,
        Key=f"{prefix}/input/part-0.jsonl",
        Body=("\n".join(lines) + "\n").encode(),
    )
    input_uri = f"s3://{k8s_cluster.bucket}/{prefix}/input/"
    output_uri = f"s3://{k8s_cluster.bucket}/{prefix}/output"
    for path in sorted(tiny_model.iterdir()):  # the weights come from S3, as in production
        s3().upload_file(str(path), k8s_cluster.bucket, f"{prefix}/model/{path.name}")
    rewrite = {
        "image": "palimpsest/rewrite:test",
        "shardsPerPod": 2,
        "sampling": {"maxTokens": 24},
        "engine": {
            "type": "vllm",
            "model": f"s3://{k8s_cluster.bucket}/{prefix}/model",
            "dtype": "float32",
            "maxModelLen": 2048,
            "engineArgs": {"enforce_eager": True, "max_num_seqs": 8},
        },
    }
    spec = {"recipe": "swallowmath", "stages": None, "sharding": {"recordsPerShard": 3}}
    body = yaml.safe_load(rewrite_job("math", input_uri, output_uri, rewrite=rewrite, **spec))
    body["spec"].pop("stages")
    k8s_cluster.apply(yaml.safe_dump(body), namespace)
    status = wait_until(
        "the job to succeed",
        lambda: phase_in(k8s_cluster, namespace, "math", "Succeeded", "Failed"),
        timeout=480,
        every=2,
    )
    assert status["phase"] == "Succeeded", status.get("message")
    assert [s["kind"] for s in status["stages"]] == ["math"]
    assert status["records"]["in"] == 6
    assert status["tokens"]["generated"] > 0 and status["tokens"]["prompt"] > 0
    assert_status_matches_markers(status)
    (job,) = jobs(k8s_cluster, namespace)
    assert job["spec"]["completions"] == 1  # two shards in one block: one model load
    pods = k8s_cluster.kubectl(
        "get", "pods", "-n", namespace, "-l", f"job-name={job['metadata']['name']}", "-o", "json"
    ).stdout
    (pod,) = json.loads(pods)["items"]
    assert pod["spec"]["nodeName"] == "palimpsest-gpu-0"
    STATUS_DUMP.with_name("e2e-rewritejob-vllm-status.yaml").write_text(
        k8s_cluster.kubectl("get", "rwj", "math", "-n", namespace, "-o", "yaml").stdout
    )


def test_dry_run_plans_only_and_storage_errors_show_in_status(
    k8s_cluster: Cluster, namespace: str, operator: Operator
) -> None:
    prefix = f"e2e/{namespace}/dry"
    input_uri = write_input(k8s_cluster.bucket, prefix, records=12)
    output_uri = f"s3://{k8s_cluster.bucket}/{prefix}/output"
    k8s_cluster.apply(rewrite_job("dry", input_uri, output_uri, dryRun=True), namespace)
    unreachable = rewrite_job("lost", "s3://no-such-bucket/in/", "s3://no-such-bucket/out")
    k8s_cluster.apply(unreachable, namespace)

    status = wait_until("the dry run", lambda: phase_in(k8s_cluster, namespace, "dry", "Succeeded"))
    assert status["dryRun"]["shards"] == 3 and status["dryRun"]["estRecords"] == 12
    assert status["dryRun"]["estTokens"] > 0
    assert {c["type"]: c["reason"] for c in status["conditions"]}["Ready"] == "DryRun"

    def lost_message() -> str | None:
        message = str((rwj(k8s_cluster, namespace, "lost").get("status") or {}).get("message"))
        return message if "temporary error" in message else None

    assert "NoSuchBucket" in wait_until("the storage error in status", lost_message)
    assert jobs(k8s_cluster, namespace) == []
