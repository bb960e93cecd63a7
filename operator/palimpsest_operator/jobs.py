"""Pure builders of the Indexed Jobs a RewriteJob runs: a filter Job and a rewrite Job.

Each builder is a function from the parsed spec (and the plan and stage ids) to a Job
manifest dict, with no cluster access, so that the Job shape is tested table-driven and the
handlers only create what these return. Names are deterministic (they carry the stage id), so
creating a Job that already exists is a 409 and means the work is already launched.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from palimpsest.chain import STAGE_PROMPTS, StageRef
from palimpsest.jobspec import JobSpec, Resources
from palimpsest_operator import constants as c

MAX_NAME: Final = 63
"""Kubernetes label values and Job names the Job controller can put on pods: at most 63."""

MAX_REWRITE_INDEXES: Final = 1000
"""Most indexes of a rewrite Job when the spec does not set shardsPerPod; well below the
10,000 completions an Indexed Job handles well, and each pod keeps its model loaded across
a block of shards."""

CPU_POOL: Final[Mapping[str, str]] = {"palimpsest.dev/pool": "cpu"}
"""Node labels of the CPU pool the filter runs on."""

RUN_AS_USER: Final = 1000
"""The non-root user the images run as."""

SHM_SIZE: Final = "16Gi"
"""Size cap of the memory-backed /dev/shm for tensor-parallel pods (NCCL's shared memory)."""


@dataclass(frozen=True)
class Owner:
    """The RewriteJob that owns a Job: Jobs are garbage-collected with it."""

    name: str
    namespace: str
    uid: str

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": c.API_VERSION,
            "kind": c.KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def job_name(owner_name: str, stage_id: str, attempt: int = 0) -> str:
    """`<owner>-<stage-id>[-r<attempt>]`, DNS-safe and at most 63 characters.

    A long owner name is cut and followed by a short hash of the whole name, so two owners
    whose names share a long prefix still get different Job names.
    """
    suffix = f"-{stage_id}" + (f"-r{attempt}" if attempt else "")
    room = MAX_NAME - len(suffix)
    prefix = owner_name
    if len(prefix) > room:
        digest = hashlib.sha256(owner_name.encode()).hexdigest()[:6]
        prefix = f"{owner_name[: room - 7].rstrip('-.')}-{digest}"
    return f"{prefix}{suffix}"


def rewrite_block(total_shards: int, shards_per_pod: int | None) -> int:
    """Shards per rewrite index: the spec's, or enough to keep indexes <= MAX_REWRITE_INDEXES."""
    if shards_per_pod is not None:
        return shards_per_pod
    return max(1, math.ceil(total_shards / MAX_REWRITE_INDEXES))


def filter_job(
    job: JobSpec, owner: Owner, stage: StageRef, plan_uri: str, total_shards: int, attempt: int = 0
) -> dict[str, Any]:
    """The filter stage as an Indexed Job on the CPU pool: one index per shard."""
    workers = job.filter.workers or _whole_cpus(job.filter.resources)
    args = [
        "worker",
        "filter",
        "--plan",
        plan_uri,
        "--output",
        job.output_uri,
        "--min-score",
        repr(job.filter.min_score),
        "--time-limit",
        repr(job.filter.time_limit),
        "--workers",
        str(workers),
        "--text-field",
        job.input.text_field,
        "--id-field",
        job.input.id_field,
        *_s3_args(job),
    ]
    container = _container(job.filter.image, args, _s3_env(job), _resources(job.filter.resources))
    pod = _pod_spec(container, node_selector=dict(CPU_POOL))
    name = job_name(owner.name, stage.stage_id, attempt)
    return _indexed_job(job, owner, name, stage, total_shards, job.filter.parallelism, pod, {})


def rewrite_job(
    job: JobSpec,
    owner: Owner,
    stages: Sequence[StageRef],
    plan_uri: str,
    total_shards: int,
    attempt: int = 0,
) -> dict[str, Any]:
    """The rewrite stages as one Indexed Job on the GPU pool: one index per block of shards.

    One pod runs all the job's consecutive rewrite stages (e.g. SGCR then SCOR) with its model
    loaded once; each stage still commits to its own folder. The Job is named after the last
    stage, whose id chains all the others.
    """
    rewrite = job.rewrite
    if rewrite is None or not stages:
        raise ValueError("spec.rewrite: required when a rewrite stage runs")
    engine = rewrite.engine
    block = rewrite_block(total_shards, rewrite.shards_per_pod)
    indexes = math.ceil(total_shards / block)
    args = [
        "worker",
        "rewrite",
        "--plan",
        plan_uri,
        "--output",
        job.output_uri,
        "--recipe",
        job.recipe,
        "--stages",
        ",".join(s.kind for s in stages),
        *(["--input-stage", stages[0].previous] if stages[0].previous else []),
        "--shards-per-index",
        str(block),
        "--engine",
        engine.type,
        "--model",
        engine.model,
        *(["--model-revision", engine.revision] if engine.revision else []),
        "--temperature",
        repr(engine.sampling.temperature),
        "--top-p",
        repr(engine.sampling.top_p),
        "--max-tokens",
        str(engine.sampling.max_tokens),
        "--n",
        str(engine.sampling.n),
        *(["--max-in-flight", str(engine.max_in_flight)] if engine.max_in_flight else []),
        "--text-field",
        job.input.text_field,
        "--id-field",
        job.input.id_field,
        *_s3_args(job),
    ]
    env = _s3_env(job)
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    gpus = 0
    if engine.type == "vllm":
        gpus = engine.tensor_parallel_size
        # vLLM's IPC sockets: a UNIX socket path must stay under 108 bytes whatever TMPDIR
        # is, and /dev/shm (tmpfs, present in every pod) is where such sockets belong.
        env.append({"name": "VLLM_RPC_BASE_PATH", "value": c.SHM_MOUNT})
        args += [
            "--tensor-parallel-size",
            str(engine.tensor_parallel_size),
            "--gpu-memory-utilization",
            repr(engine.gpu_memory_utilization),
            "--dtype",
            engine.dtype,
        ]
        if engine.max_model_len:
            args += ["--max-model-len", str(engine.max_model_len)]
        for key, value in sorted(engine.engine_args.items()):
            args += ["--engine-arg", f"{key}={json.dumps(value)}"]
    else:
        args += ["--base-url", engine.base_url or "", "--api-key-env", engine.api_key_env]
        if rewrite.api_key_secret is not None:
            env.append(
                _secret_env(
                    engine.api_key_env,
                    rewrite.api_key_secret.name,
                    rewrite.api_key_secret.key,
                    optional=False,
                )
            )
    if "translate" in {s.kind for s in stages}:
        args += ["--language", rewrite.language]
    if rewrite.prompts_config_map:
        args += ["--prompts-dir", c.PROMPTS_MOUNT]
        volumes.append({"name": "prompts", "configMap": {"name": rewrite.prompts_config_map}})
        mounts.append({"name": "prompts", "mountPath": c.PROMPTS_MOUNT, "readOnly": True})
    if rewrite.model_claim:
        volumes.append(
            {
                "name": "models",
                "persistentVolumeClaim": {
                    "claimName": rewrite.model_claim,
                    "readOnly": rewrite.model_claim_read_only,
                },
            }
        )
        mounts.append({"name": "models", "mountPath": c.MODELS_MOUNT})
        env += [
            {"name": "PALIMPSEST_MODEL_CACHE", "value": f"{c.MODELS_MOUNT}/cache"},
            {"name": "HF_HOME", "value": f"{c.MODELS_MOUNT}/huggingface"},
        ]
    if gpus > 1:
        volumes.append({"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM_SIZE}})
        mounts.append({"name": "shm", "mountPath": c.SHM_MOUNT})
    resources = _resources(rewrite.resources)
    if gpus:
        resources.setdefault("requests", {})["nvidia.com/gpu"] = str(gpus)
        resources.setdefault("limits", {})["nvidia.com/gpu"] = str(gpus)
    container = _container(rewrite.image, args, env, resources, mounts)
    pod = _pod_spec(
        container,
        node_selector=dict(rewrite.node_selector),
        volumes=volumes,
        tolerations=[dict(t) for t in rewrite.tolerations],
        priority_class=rewrite.priority_class,
    )
    last = stages[-1]
    name = job_name(owner.name, last.stage_id, attempt)
    annotations = {
        f"{c.GROUP}/stage-ids": ",".join(s.stage_id for s in stages),
        f"{c.GROUP}/shards-per-index": str(block),
    }
    return _indexed_job(job, owner, name, last, indexes, rewrite.parallelism, pod, annotations)


# --- pieces ---------------------------------------------------------------------------------


def job_labels(owner_name: str, stage: StageRef) -> dict[str, str]:
    return {
        c.LABEL_MANAGED_BY: c.MANAGED_BY,
        c.LABEL_JOB: _label_value(owner_name),
        c.LABEL_STAGE: stage.kind,
        c.LABEL_STAGE_ID: stage.stage_id,
    }


def _indexed_job(
    job: JobSpec,
    owner: Owner,
    name: str,
    stage: StageRef,
    completions: int,
    parallelism: int,
    pod: dict[str, Any],
    annotations: Mapping[str, str],
) -> dict[str, Any]:
    labels = job_labels(owner.name, stage)
    if job.queue_name:
        labels[c.LABEL_KUEUE_QUEUE] = job.queue_name
    pod_labels = {k: v for k, v in labels.items() if k != c.LABEL_KUEUE_QUEUE}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": owner.namespace,
            "labels": labels,
            "annotations": dict(annotations),
            "ownerReferences": [owner.reference()],
        },
        "spec": {
            "completionMode": "Indexed",
            "completions": completions,
            "parallelism": max(1, min(parallelism, completions)),
            "backoffLimitPerIndex": job.retries.per_shard,
            "maxFailedIndexes": min(job.retries.max_failed_shards, completions),
            "podReplacementPolicy": "Failed",
            "podFailurePolicy": {
                "rules": [
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                    {
                        "action": "FailIndex",
                        "onExitCodes": {
                            "containerName": "worker",
                            "operator": "In",
                            "values": [c.EXIT_PERMANENT],
                        },
                    },
                ]
            },
            "suspend": job.suspend,
            "template": {"metadata": {"labels": pod_labels}, "spec": pod},
        },
    }


def _pod_spec(
    container: dict[str, Any],
    node_selector: dict[str, str],
    volumes: list[dict[str, Any]] | None = None,
    tolerations: list[dict[str, Any]] | None = None,
    priority_class: str | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 30,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "fsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "nodeSelector": node_selector,
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {}}, *(volumes or [])],
    }
    if tolerations:
        spec["tolerations"] = tolerations
    if priority_class:
        spec["priorityClassName"] = priority_class
    return spec


def _container(
    image: str,
    args: list[str],
    env: list[dict[str, Any]],
    resources: dict[str, Any],
    mounts: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "name": "worker",
        "image": image,
        "command": ["palimpsest"],
        "args": args,
        # /tmp is a writable emptyDir (the root filesystem is read-only); HOME points there
        # for caches. TMPDIR stays unset: /tmp is the default, and vLLM's IPC socket paths
        # under it must stay short.
        "env": [{"name": "HOME", "value": "/tmp"}, *env],
        "resources": resources,
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, *(mounts or [])],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }


def _resources(resources: Resources) -> dict[str, Any]:
    values = {k: v for k, v in (("cpu", resources.cpu), ("memory", resources.memory)) if v}
    if not values:
        return {}
    return {"requests": dict(values), "limits": dict(values)}


def _whole_cpus(resources: Resources) -> int:
    """Linter processes for a CPU request: its whole cores, at least one."""
    cpu = resources.cpu or "1"
    if cpu.endswith("m"):
        return max(1, int(float(cpu[:-1]) // 1000))
    return max(1, int(float(cpu)))


def _s3_args(job: JobSpec) -> list[str]:
    args = []
    if job.storage.endpoint:
        args += ["--s3-endpoint", job.storage.endpoint]
    if job.storage.region:
        args += ["--s3-region", job.storage.region]
    return args


def _s3_env(job: JobSpec) -> list[dict[str, Any]]:
    """S3 settings as the AWS SDKs read them (for code that takes no flags, e.g. model
    downloads from s3://), and the credentials from the storage Secret."""
    env: list[dict[str, Any]] = []
    if job.storage.endpoint:
        env.append({"name": "AWS_ENDPOINT_URL_S3", "value": job.storage.endpoint})
    if job.storage.region:
        env.append({"name": "AWS_DEFAULT_REGION", "value": job.storage.region})
    secret = job.storage.secret_name
    if secret is None:
        return env
    return [
        *env,
        *(_secret_env(key, secret, key, optional=False) for key in c.S3_SECRET_KEYS),
        *(_secret_env(key, secret, key, optional=True) for key in c.S3_OPTIONAL_SECRET_KEYS),
    ]


def _secret_env(name: str, secret: str, key: str, optional: bool) -> dict[str, Any]:
    return {
        "name": name,
        "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": optional}},
    }


def _label_value(value: str) -> str:
    """A label value (<= 63 characters); long names are cut and hashed like Job names."""
    if len(value) <= MAX_NAME:
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:6]
    return f"{value[: MAX_NAME - 7].rstrip('-._')}-{digest}"


def prompt_names(stages: Sequence[StageRef]) -> list[str]:
    """The prompt files a prompts ConfigMap must hold for these stages."""
    return [f"{STAGE_PROMPTS[s.kind]}.yaml" for s in stages if s.kind in STAGE_PROMPTS]


def job_labels_selector(owner_name: str) -> str:
    """The label selector of the Jobs one RewriteJob owns."""
    return f"{c.LABEL_MANAGED_BY}={c.MANAGED_BY},{c.LABEL_JOB}={_label_value(owner_name)}"
