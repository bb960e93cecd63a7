"""The Indexed Job builders: shape, pools, retries, security, resources and names."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from palimpsest import runtime
from palimpsest.identity import StageRef
from palimpsest.job import parse_job
from palimpsest_operator import constants as c
from palimpsest_operator.jobs import (
    MAX_REWRITE_INDEXES,
    Owner,
    StageJob,
    job_name,
    rewrite_block,
    stage_job,
)
from palimpsest_operator.placement import parse_placement

OWNER = Owner("demo", "team", "uid-1")
FILTER = StageRef("filter", "filter-0123456789ab", None)
SGCR = StageRef("sgcr", "sgcr-0123456789ab", FILTER.stage_id)
SCOR = StageRef("scor", "scor-ba9876543210", SGCR.stage_id)
DOCUMENT = "s3://bucket/out/_jobs/job-x.json"
DNS = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

SPEC: dict[str, Any] = {
    "apiVersion": "palimpsest.dev/v1alpha1",
    "kind": "RewriteJob",
    "metadata": {"name": "demo", "namespace": "team"},
    "spec": {
        "recipe": "swallowcode",
        "input": {"uri": "s3://bucket/in"},
        "output": {"uri": "s3://bucket/out"},
        "storage": {"endpoint": "http://s3:9000", "region": "r1", "secretRef": {"name": "s3"}},
        "rewrite": {"engine": {"type": "vllm", "model": "org/model", "tensorParallelSize": 2}},
    },
}


def with_changes(spec: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A copy of a manifest with `a__b__c=value` set at spec.a.b.c."""
    body = copy.deepcopy(spec)
    for path, value in changes.items():
        node = body["spec"]
        keys = path.split("__")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return body


def build(stages: tuple[StageRef, ...], total: int = 10, **changes: Any) -> dict[str, Any]:
    body = with_changes(SPEC, **changes)
    work = StageJob(parse_job(body), parse_placement(body), OWNER, DOCUMENT, stages, total)
    return stage_job(work)


def pod_of(manifest: dict[str, Any]) -> dict[str, Any]:
    return dict(manifest["spec"]["template"]["spec"])


def container_of(manifest: dict[str, Any]) -> dict[str, Any]:
    return dict(pod_of(manifest)["containers"][0])


def args_of(manifest: dict[str, Any]) -> list[str]:
    return list(container_of(manifest)["args"])


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_filter_job_shape() -> None:
    job = build((FILTER,), filter={"parallelism": 4})
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
    pod = pod_of(job)
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    assert pod["nodeSelector"] == {"palimpsest.dev/pool": "cpu"}
    assert "tolerations" not in pod
    container = container_of(job)
    assert container["command"] == ["palimpsest"]
    args = args_of(job)
    assert args[:5] == ["worker", "--job", DOCUMENT, "--stages", "filter"]
    assert "--index" not in args and flag(args, "--shards-per-index") == "1"
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


def test_pods_run_as_the_images_user_with_writable_paths_only_on_volumes() -> None:
    for job in (build((FILTER,)), build((SGCR, SCOR))):
        pod, container = pod_of(job), container_of(job)
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True
        assert security["runAsUser"] == security["runAsGroup"] == runtime.RUN_AS_UID
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}
        assert container["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        for path in (runtime.TMP_DIR, runtime.CACHE_DIR):
            assert volumes[mounts[path]]["emptyDir"]["sizeLimit"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        for name, value in runtime.CACHE_ENV.items():
            assert env[name] == value
            assert any(value == p or value.startswith(p + "/") for p in mounts), name


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
            lambda j: all("valueFrom" not in e for e in container_of(j)["env"]),
        ),
        (
            {"filter": {"resources": {"cpu": "3500m"}}},
            lambda j: flag(args_of(j), "--workers") == "3",
        ),
        (
            {"filter": {"activeDeadlineSeconds": 7200}},
            lambda j: j["spec"]["activeDeadlineSeconds"] == 7200,
        ),
        ({}, lambda j: "activeDeadlineSeconds" not in j["spec"]),
        (
            {},
            lambda j: (
                flag(args_of(j), "--give-up") == "s3://bucket/out/_give-up/" + j["metadata"]["name"]
            ),
        ),
        (
            {
                "filter": {
                    "nodeSelector": {"pool": "batch"},
                    "tolerations": [{"key": "batch", "operator": "Exists"}],
                }
            },
            lambda j: (
                (pod_of(j)["nodeSelector"], pod_of(j)["tolerations"])
                == ({"pool": "batch"}, [{"key": "batch", "operator": "Exists"}])
            ),
        ),
    ],
)
def test_filter_job_options(changes: dict[str, Any], check: Any) -> None:
    assert check(build((FILTER,), **changes))


def test_rewrite_job_on_the_gpu_pool() -> None:
    job = build((SGCR, SCOR))
    assert job["metadata"]["name"] == "demo-scor-ba9876543210"
    assert job["metadata"]["annotations"][c.ANNOTATION_STAGE_IDS] == (
        f"{SGCR.stage_id},{SCOR.stage_id}"
    )
    pod = pod_of(job)
    assert pod["nodeSelector"] == {"palimpsest.dev/pool": "gpu"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in (
        pod["tolerations"]
    )
    resources = container_of(job)["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "2"
    assert resources["requests"]["nvidia.com/gpu"] == "2"
    shm = [v for v in pod["volumes"] if v["name"] == "shm"]
    assert shm and shm[0]["emptyDir"]["medium"] == "Memory"
    args = args_of(job)
    assert args[:5] == ["worker", "--job", DOCUMENT, "--stages", "sgcr,scor"]
    assert flag(args, "--shards-per-index") == "1" and job["spec"]["completions"] == 10


def test_a_one_gpu_vllm_pod_has_a_memory_backed_dev_shm() -> None:
    """vLLM's engine needs more shared memory than a runtime's default 64 MiB /dev/shm even
    with one GPU (the real node's containerd showed it)."""
    engine = {"type": "vllm", "model": "m", "tensorParallelSize": 1}
    job = build((SGCR,), rewrite={"engine": engine})
    pod = pod_of(job)
    (shm,) = [v for v in pod["volumes"] if v["name"] == "shm"]
    assert shm["emptyDir"]["medium"] == "Memory"
    mounts = container_of(job)["volumeMounts"]
    assert {"name": "shm", "mountPath": "/dev/shm"} in mounts


def test_rewrite_job_openai_with_key() -> None:
    job = build(
        (SGCR, SCOR),
        rewrite={
            "engine": {
                "type": "openai",
                "model": "served",
                "baseURL": "http://llm:8000/v1",
                "apiKeySecretRef": {"name": "llm", "key": "token"},
            },
            "prompts": {"configMapName": "my-prompts"},
            "shardsPerPod": 4,
        },
    )
    pod, container = pod_of(job), container_of(job)
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    assert not [v for v in pod["volumes"] if v["name"] == "shm"]
    assert not [v for v in pod["volumes"] if "configMap" in v], "prompts travel in the document"
    key_env = [e for e in container["env"] if e["name"] == "OPENAI_API_KEY"]
    assert key_env[0]["valueFrom"]["secretKeyRef"]["key"] == "token"
    assert job["spec"]["completions"] == 3  # ceil(10 / 4)
    assert flag(args_of(job), "--shards-per-index") == "4"


def test_a_model_volume_holds_the_hub_cache() -> None:
    job = build(
        (SGCR, SCOR),
        rewrite={"engine": {"type": "vllm", "model": "m", "modelVolume": {"claimName": "w"}}},
    )
    volumes = {v["name"]: v for v in pod_of(job)["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == "w"
    env = [e for e in container_of(job)["env"] if e["name"] == "HF_HOME"]
    assert env == [{"name": "HF_HOME", "value": f"{c.MODELS_MOUNT}/huggingface"}]


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


# --- podTemplate, hub token, model cache ----------------------------------------------------

TEMPLATE: dict[str, Any] = {
    "metadata": {"labels": {"team": "ml"}, "annotations": {"k8s.v1.cni.cncf.io/networks": "rdma"}},
    "spec": {
        "hostNetwork": True,
        "runtimeClassName": "nvidia",
        "volumes": [{"name": "certs", "secret": {"secretName": "ca"}}],
        "containers": [
            {
                "name": "worker",
                "env": [
                    {"name": "NCCL_DEBUG", "value": "INFO"},
                    {"name": "HF_HOME", "value": "/x"},
                ],
                "volumeMounts": [{"name": "certs", "mountPath": "/etc/certs", "readOnly": True}],
            },
            {"name": "proxy", "image": "envoy:1.30"},
        ],
    },
}


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


@pytest.mark.parametrize(("stage", "section"), [(FILTER, "filter"), (SGCR, "rewrite")])
def test_pod_template_is_merged_into_the_stage_pods(stage: StageRef, section: str) -> None:
    manifest = build((stage,), **{f"{section}__podTemplate": TEMPLATE})
    meta = manifest["spec"]["template"]["metadata"]
    assert meta["labels"]["team"] == "ml" and meta["labels"][c.LABEL_STAGE] == stage.kind
    assert meta["annotations"] == {"k8s.v1.cni.cncf.io/networks": "rdma"}
    pod = pod_of(manifest)
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert pod["runtimeClassName"] == "nvidia"
    assert [ct["name"] for ct in pod["containers"]] == ["worker", "proxy"]
    worker = pod["containers"][0]
    env = env_of(worker)
    assert env["NCCL_DEBUG"] == "INFO" and env["HF_HOME"] == "/x"
    assert [e["name"] for e in worker["env"]].count("HF_HOME") == 1
    assert {"name": "certs", "mountPath": "/etc/certs", "readOnly": True} in worker["volumeMounts"]
    names = [v["name"] for v in pod["volumes"]]
    assert "certs" in names and "tmp" in names and "cache" in names
    assert worker["command"] == ["palimpsest"] and pod["securityContext"]["runAsUser"] == 10001


def test_pod_template_of_one_stage_leaves_the_other_alone() -> None:
    pod = pod_of(build((FILTER,), rewrite__podTemplate=TEMPLATE))
    assert "hostNetwork" not in pod and len(pod["containers"]) == 1


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"spec": {"containers": [{"name": "worker", "command": ["sh"]}]}}, "worker.command"),
        ({"spec": {"containers": [{"name": "worker", "image": "evil"}]}}, "worker.image"),
        (
            {"spec": {"containers": [{"name": "worker", "securityContext": {"runAsUser": 0}}]}},
            "worker.securityContext",
        ),
        ({"spec": {"securityContext": {"runAsUser": 0}}}, "spec.securityContext"),
        ({"spec": {"nodeSelector": {"a": "b"}}}, "spec.nodeSelector"),
        ({"spec": {"volumes": [{"name": "tmp", "emptyDir": {}}]}}, "spec.volumes.tmp"),
        ({"metadata": {"labels": {c.LABEL_STAGE: "x"}}}, "metadata.labels.palimpsest.dev/stage"),
        ({"spec": {"containers": [{"name": "side"}]}}, "containers.side.image"),
        ({"spec": {"hostNetwork": "yes"}}, "spec.hostNetwork"),
    ],
)
def test_pod_template_refuses_what_the_operator_owns(patch: dict[str, Any], field: str) -> None:
    with pytest.raises(
        ValueError, match=re.escape("spec.rewrite.podTemplate.") + ".*" + re.escape(field)
    ):
        build((SGCR,), rewrite__podTemplate=patch)


def test_hub_token_becomes_hf_token_from_the_secret() -> None:
    ref = {"name": "hub", "key": "token"}
    worker = pod_of(build((SGCR,), rewrite__engine__hubTokenSecretRef=ref))["containers"][0]
    token = env_of(worker)["HF_TOKEN"]
    assert token == {"secretKeyRef": {"name": "hub", "key": "token", "optional": False}}
    assert "HF_TOKEN" not in env_of(pod_of(build((SGCR,)))["containers"][0])
    assert "HF_TOKEN" not in env_of(
        pod_of(build((FILTER,), rewrite__engine__hubTokenSecretRef=ref))["containers"][0]
    )


def test_hub_cache_is_an_emptydir_of_the_configured_size_without_a_pvc() -> None:
    def cache(pod: dict[str, Any]) -> dict[str, Any]:
        return next(v for v in pod["volumes"] if v["name"] == "cache")

    pod = pod_of(build((SGCR,)))
    assert cache(pod)["emptyDir"]["sizeLimit"] == "100Gi"
    worker = pod["containers"][0]
    mount = next(m for m in worker["volumeMounts"] if m["name"] == "cache")
    assert env_of(worker)["HF_HOME"].startswith(mount["mountPath"] + "/")
    assert "HF_HUB_OFFLINE" not in env_of(worker)
    sized = pod_of(build((SGCR,), rewrite__engine__modelCacheSize="300Gi"))
    assert cache(sized)["emptyDir"]["sizeLimit"] == "300Gi"
    assert (
        cache(pod_of(build((FILTER,), rewrite__engine__modelCacheSize="300Gi")))["emptyDir"][
            "sizeLimit"
        ]
        == "1Gi"
    )
    with pytest.raises(ValueError, match="modelCacheSize"):
        build((SGCR,), rewrite__engine__modelCacheSize="lots")


@pytest.mark.parametrize("read_only", [True, False])
def test_model_pvc_holds_hf_home_and_a_read_only_one_is_offline(read_only: bool) -> None:
    volume = {"claimName": "weights", "readOnly": read_only}
    worker = pod_of(build((SGCR,), rewrite__engine__modelVolume=volume))["containers"][0]
    env = env_of(worker)
    assert env["HF_HOME"] == f"{c.MODELS_MOUNT}/huggingface"
    assert [e["name"] for e in worker["env"]].count("HF_HOME") == 1
    assert (env.get("HF_HUB_OFFLINE") == "1") is read_only


@pytest.mark.parametrize(("section", "stages"), [("filter", (FILTER,)), ("rewrite", (SGCR, SCOR))])
def test_active_deadline_is_per_stage(section: str, stages: tuple[StageRef, ...]) -> None:
    other = (SGCR, SCOR) if section == "filter" else (FILTER,)
    changes = {f"{section}__activeDeadlineSeconds": 600}
    assert build(stages, **changes)["spec"]["activeDeadlineSeconds"] == 600
    assert "activeDeadlineSeconds" not in build(other, **changes)["spec"]


@pytest.mark.parametrize("value", [0, -5, "1h", True])
def test_active_deadline_must_be_a_positive_integer(value: Any) -> None:
    with pytest.raises(ValueError, match=r"spec\.rewrite\.activeDeadlineSeconds"):
        build((SGCR, SCOR), rewrite__activeDeadlineSeconds=value)


@pytest.mark.parametrize("stage", ["filter", "rewrite"])
@pytest.mark.parametrize(
    ("field", "value"), [("tolerations", {"key": "x"}), ("nodeSelector", {"pool": 3})]
)
def test_placement_errors_name_the_field(stage: str, field: str, value: Any) -> None:
    body = copy.deepcopy(SPEC)
    body["spec"].setdefault(stage, {})[field] = value
    with pytest.raises(ValueError, match=rf"^spec\.{stage}\.{field}"):
        parse_placement(body)
