"""The Indexed Job builders: shape, pools, retries, security, resources and names."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from palimpsest.chain import StageRef
from palimpsest.jobspec import parse_job
from palimpsest_operator import constants as c
from palimpsest_operator.jobs import (
    MAX_REWRITE_INDEXES,
    Owner,
    filter_job,
    job_name,
    rewrite_block,
    rewrite_job,
)

OWNER = Owner("demo", "team", "uid-1")
FILTER = StageRef("filter", "filter-0123456789ab", None)
SGCR = StageRef("sgcr", "sgcr-0123456789ab", FILTER.stage_id)
SCOR = StageRef("scor", "scor-ba9876543210", SGCR.stage_id)
PLAN = "s3://bucket/out/_plans/plan-x.json"
DNS = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

SPEC: dict[str, Any] = {
    "metadata": {"name": "demo", "namespace": "team"},
    "spec": {
        "recipe": "swallowcode",
        "input": {"uri": "s3://bucket/in"},
        "output": {"uri": "s3://bucket/out"},
        "storage": {"endpoint": "http://s3:9000", "region": "r1", "secretRef": {"name": "s3"}},
        "rewrite": {"engine": {"type": "vllm", "model": "org/model", "tensorParallelSize": 2}},
    },
}


def job_of(**changes: Any) -> Any:
    body = copy.deepcopy(SPEC)
    for path, value in changes.items():
        node = body["spec"]
        keys = path.split("__")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return parse_job(body)


def args_of(manifest: dict[str, Any]) -> list[str]:
    return list(manifest["spec"]["template"]["spec"]["containers"][0]["args"])


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_filter_job_shape() -> None:
    job = filter_job(job_of(filter={"parallelism": 4}), OWNER, FILTER, PLAN, total_shards=10)
    spec = job["spec"]
    assert job["metadata"]["name"] == "demo-filter-0123456789ab"
    assert job["metadata"]["ownerReferences"][0] == {
        "apiVersion": "palimpsest.dev/v1alpha1",
        "kind": "RewriteJob",
        "name": "demo",
        "uid": "uid-1",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 10, 4)
    assert spec["backoffLimitPerIndex"] == 3 and spec["maxFailedIndexes"] == 0
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}
    assert rules[1]["action"] == "FailIndex" and rules[1]["onExitCodes"]["values"] == [3]
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["nodeSelector"] == {"palimpsest.dev/pool": "cpu"}
    assert "tolerations" not in pod
    container = pod["containers"][0]
    assert container["command"] == ["palimpsest"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    args = args_of(job)
    assert args[:2] == ["worker", "filter"] and "--index" not in args
    assert flag(args, "--plan") == PLAN and flag(args, "--output") == "s3://bucket/out"
    assert flag(args, "--min-score") == "7.0" and flag(args, "--s3-endpoint") == "http://s3:9000"
    secret_envs = {
        e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e
    }
    assert secret_envs["AWS_ACCESS_KEY_ID"] == {
        "name": "s3",
        "key": "AWS_ACCESS_KEY_ID",
        "optional": False,
    }
    assert secret_envs["AWS_SESSION_TOKEN"]["optional"] is True
    plain = {e["name"]: e.get("value") for e in container["env"] if "value" in e}
    assert plain["AWS_ENDPOINT_URL_S3"] == "http://s3:9000"
    assert plain["AWS_DEFAULT_REGION"] == "r1"
    assert container["resources"]["requests"] == {"cpu": "1", "memory": "2Gi"}
    labels = job["metadata"]["labels"]
    assert labels[c.LABEL_STAGE_ID] == FILTER.stage_id and labels[c.LABEL_JOB] == "demo"
    assert c.LABEL_KUEUE_QUEUE not in labels


@pytest.mark.parametrize(
    ("changes", "check"),
    [
        (
            {"queueName": "gpu-queue"},
            lambda j: j["metadata"]["labels"][c.LABEL_KUEUE_QUEUE] == "gpu-queue",
        ),
        ({"suspend": True}, lambda j: j["spec"]["suspend"] is True),
        (
            {"retries": {"perShard": 0, "maxFailedShards": 50}},
            lambda j: (j["spec"]["backoffLimitPerIndex"], j["spec"]["maxFailedIndexes"]) == (0, 10),
        ),
        (
            {"storage": {}},
            lambda j: all(
                "valueFrom" not in e for e in j["spec"]["template"]["spec"]["containers"][0]["env"]
            ),
        ),
        (
            {"filter": {"resources": {"cpu": "3500m"}}},
            lambda j: flag(args_of(j), "--workers") == "3",
        ),
        ({"filter": {"workers": 6}}, lambda j: flag(args_of(j), "--workers") == "6"),
    ],
)
def test_filter_job_options(changes: dict[str, Any], check: Any) -> None:
    assert check(filter_job(job_of(**changes), OWNER, FILTER, PLAN, total_shards=10))


def test_rewrite_job_on_the_gpu_pool() -> None:
    job = rewrite_job(job_of(), OWNER, [SGCR, SCOR], PLAN, total_shards=10)
    assert job["metadata"]["name"] == "demo-scor-ba9876543210"
    assert job["metadata"]["annotations"][f"{c.GROUP}/stage-ids"] == (
        f"{SGCR.stage_id},{SCOR.stage_id}"
    )
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"palimpsest.dev/pool": "gpu"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in (
        pod["tolerations"]
    )
    resources = pod["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "2"
    assert resources["requests"]["nvidia.com/gpu"] == "2"
    shm = [v for v in pod["volumes"] if v["name"] == "shm"]
    assert shm and shm[0]["emptyDir"]["medium"] == "Memory"
    args = args_of(job)
    assert args[:2] == ["worker", "rewrite"]
    assert flag(args, "--stages") == "sgcr,scor"
    assert flag(args, "--input-stage") == FILTER.stage_id
    assert flag(args, "--tensor-parallel-size") == "2" and flag(args, "--engine") == "vllm"
    assert flag(args, "--shards-per-index") == "1" and job["spec"]["completions"] == 10


def test_rewrite_job_openai_with_prompts_and_key() -> None:
    spec = job_of(
        rewrite={
            "engine": {
                "type": "openai",
                "model": "served",
                "baseURL": "http://llm:8000/v1",
                "apiKeySecretRef": {"name": "llm", "key": "token"},
            },
            "prompts": {"configMapName": "my-prompts"},
            "shardsPerPod": 4,
        }
    )
    job = rewrite_job(spec, OWNER, [SGCR, SCOR], PLAN, total_shards=10)
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    args = args_of(job)
    assert flag(args, "--base-url") == "http://llm:8000/v1"
    assert flag(args, "--prompts-dir") == c.PROMPTS_MOUNT
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    assert not [v for v in pod["volumes"] if v["name"] == "shm"]
    assert {"name": "prompts", "configMap": {"name": "my-prompts"}} in pod["volumes"]
    key_env = [e for e in container["env"] if e["name"] == "OPENAI_API_KEY"]
    assert key_env[0]["valueFrom"]["secretKeyRef"]["key"] == "token"
    assert job["spec"]["completions"] == 3  # ceil(10 / 4)


def test_rewrite_without_filter_reads_the_plan() -> None:
    math = StageRef("math", "math-0123456789ab", None)
    spec = job_of(recipe="swallowmath", rewrite={"engine": {"type": "vllm", "model": "m"}})
    args = args_of(rewrite_job(spec, OWNER, [math], PLAN, total_shards=3))
    assert "--input-stage" not in args


@pytest.mark.parametrize(
    ("total", "per_pod", "block"),
    [
        (10, None, 1),
        (MAX_REWRITE_INDEXES, None, 1),
        (MAX_REWRITE_INDEXES + 1, None, 2),
        (100_000, None, 100),
        (100_000, 7, 7),
    ],
)
def test_rewrite_block_keeps_indexes_bounded(total: int, per_pod: int | None, block: int) -> None:
    assert rewrite_block(total, per_pod) == block


@pytest.mark.parametrize(
    ("owner", "stage", "attempt"),
    [
        ("demo", FILTER.stage_id, 0),
        ("a" * 80, SCOR.stage_id, 0),
        ("x" * 50, SGCR.stage_id, 12),
        ("name-with-dash-" + "b" * 40, FILTER.stage_id, 1),
    ],
)
def test_job_names_are_dns_safe_and_carry_the_stage_id(
    owner: str, stage: str, attempt: int
) -> None:
    name = job_name(owner, stage, attempt)
    assert len(name) <= 63 and DNS.match(name)
    assert stage in name
    assert name == job_name(owner, stage, attempt)


def test_long_owner_names_stay_distinct() -> None:
    assert job_name("a" * 70 + "x", FILTER.stage_id) != job_name("a" * 70 + "y", FILTER.stage_id)


def test_vllm_engine_arguments_are_passed_through() -> None:
    spec = job_of(
        rewrite={
            "engine": {
                "type": "vllm",
                "model": "/models/tiny",
                "dtype": "float32",
                "maxModelLen": 2048,
                "engineArgs": {"enforce_eager": True, "max_num_seqs": 8},
            }
        }
    )
    args = args_of(rewrite_job(spec, OWNER, [SGCR, SCOR], PLAN, total_shards=2))
    pairs = [args[i + 1] for i, a in enumerate(args) if a == "--engine-arg"]
    assert pairs == ["enforce_eager=true", "max_num_seqs=8"]
    assert flag(args, "--dtype") == "float32" and flag(args, "--max-model-len") == "2048"
