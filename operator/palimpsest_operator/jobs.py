"""Pure builders of the Indexed Jobs a RewriteJob runs: one Job per group of stages.

Each builder is a function from the job, its placement, the job document's URI and the stage
ids to a Job manifest dict, with no cluster access, so that the Job shape is tested
table-driven and the handlers only create what these return. A CPU stage (the filter) is one
Job with one index per shard; consecutive LLM stages are one Job on the GPU pool with one
index per block of shards, the model loaded once per pod; dedup is one Job per step, run in
order (`stage_jobs`). Worker pods get the job document's
URI and their stage group, nothing that repeats the spec. Names are deterministic (they
carry the stage id), so creating a Job that already exists is a 409 and means the work is
already launched.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

from palimpsest import runtime
from palimpsest.dedupsteps import STEPS, step_ref, step_units
from palimpsest.identity import StageRef
from palimpsest.job import Job
from palimpsest.stages.registry import STAGES, Runner, groups
from palimpsest_operator import constants as c
from palimpsest_operator.evictions import give_up_prefix
from palimpsest_operator.placement import Placement, PodTemplate, PoolPlacement, Resources

MAX_NAME: Final = 63
"""Kubernetes label values and Job names the Job controller can put on pods: at most 63."""

MAX_REWRITE_INDEXES: Final = 1000
"""Most indexes of a rewrite Job when the spec does not set shardsPerPod; well below the
10,000 completions an Indexed Job handles well, and each pod keeps its model loaded across
a block of shards."""

SHM_SIZE: Final = "16Gi"
"""Size cap of the memory-backed /dev/shm of vLLM pods. vLLM's engine reaches its workers
through a shared-memory ring buffer (160 MiB) even on one GPU, more than the 64 MiB /dev/shm
container runtimes give by default; NCCL uses it between tensor-parallel GPUs too."""

TMP_SIZE: Final = "20Gi"
"""Size cap of the /tmp emptyDir: record parts are written there before upload."""

CPU_CACHE_SIZE: Final = "1Gi"
"""Size cap of the cache emptyDir of CPU stages. LLM stages take
spec.rewrite.engine.modelCacheSize (placement.DEFAULT_MODEL_CACHE_SIZE): room for a model's
weights in the hub cache at HF_HOME and vLLM's compile caches (a PVC at /models holds
larger models)."""

HF_TOKEN_ENV: Final = "HF_TOKEN"
"""The variable the Hugging Face hub client reads its token from (gated models)."""


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


@dataclass(frozen=True)
class ShardList:
    """Some of the plan's shards, written at `uri` as a JSON list for the workers to read."""

    uri: str
    shards: tuple[int, ...]


@dataclass(frozen=True)
class StageJob:
    """What one Job runs: a group of the job's stages over the plan's shards."""

    job: Job
    placement: Placement
    owner: Owner
    document_uri: str
    stages: tuple[StageRef, ...]
    total_shards: int
    attempt: int = 0
    only: ShardList | None = None
    """The shards a retry Job runs (its indexes count through them); None: every shard."""
    step: str | None = None
    """The step of a stage that runs in steps (dedup); `total_shards` then counts its units."""

    @property
    def runner(self) -> Runner:
        return STAGES[self.stages[0].kind].runner

    @property
    def pool(self) -> PoolPlacement:
        return self.placement.pool(STAGES[self.stages[0].kind].pool)

    @property
    def name(self) -> str:
        return job_name(self.owner.name, self.stages[-1].stage_id, self.attempt)


def stage_jobs(
    job: Job,
    placement: Placement,
    owner: Owner,
    document_uri: str,
    refs: tuple[StageRef, ...],
    shards: int,
    attempt: int = 0,
) -> list[StageJob]:
    """The Jobs of a job's stages, in the order they run: one per stage group, and one per
    step of a stage that runs in steps (dedup: signatures per shard, buckets per column
    range, one clusters index, filter per shard), each step's markers under the stage's
    folder (`dedupstage.step_ref`)."""
    works = []
    for group in groups(job.stages):
        chosen = tuple(r for r in refs if r.kind in group)
        base = StageJob(job, placement, owner, document_uri, chosen, shards, attempt)
        if STAGES[group[0]].runner is not Runner.CORPUS:
            works.append(base)
            continue
        works += [
            replace(
                base,
                stages=(step_ref(chosen[0], step),),
                total_shards=step_units(step, shards, job.dedup),
                step=step,
            )
            for step in STEPS
        ]
    return works


def job_name(owner_name: str, stage_id: str, attempt: int = 0) -> str:
    """`<owner>-<stage-id>[-r<attempt>]`, DNS-safe and at most 63 characters.

    A long owner name is cut and followed by a short hash of the whole name, so two owners
    whose names share a long prefix still get different Job names. A group's Job is named
    after its last stage, whose id chains all the others.
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


def shards_per_index(work: StageJob) -> int:
    if work.runner is not Runner.LLM:
        return 1
    return rewrite_block(work.total_shards, work.placement.gpu.shards_per_pod)


def stage_job(work: StageJob) -> dict[str, Any]:
    """The Job manifest of one stage group."""
    block = shards_per_index(work)
    args = [
        "worker",
        "--job",
        work.document_uri,
        "--stages",
        ",".join(s.kind for s in work.stages),
        "--shards-per-index",
        str(block),
        "--give-up",
        give_up_prefix(work.job.output_uri, work.name),
    ]
    if work.step is not None:
        args += ["--step", work.step]
    pod = PodParts(env=[*_cache_env(), *_s3_env(work.job, work.placement)])
    if work.runner is Runner.LLM:
        _llm_parts(work, pod)
    else:
        args += ["--workers", str(_whole_cpus(work.pool.resources))]
    cache_size = (
        work.placement.gpu.model_cache_size if work.runner is Runner.LLM else CPU_CACHE_SIZE
    )
    pod.volumes += [
        {"name": "tmp", "emptyDir": {"sizeLimit": TMP_SIZE}},
        {"name": "cache", "emptyDir": {"sizeLimit": cache_size}},
    ]
    pod.mounts += [
        {"name": "tmp", "mountPath": runtime.TMP_DIR},
        {"name": "cache", "mountPath": runtime.CACHE_DIR},
    ]
    patch = work.pool.pod_template
    pod.env = _merge_env(pod.env, patch.env)
    pod.volumes += [dict(v) for v in patch.volumes]
    pod.mounts += [dict(m) for m in patch.volume_mounts]
    annotations = {
        c.ANNOTATION_STAGE_IDS: ",".join(s.stage_id for s in work.stages),
        c.ANNOTATION_SHARDS_PER_INDEX: str(block),
    }
    shards = work.total_shards
    if work.only is not None:
        args += ["--shard-list", work.only.uri]
        annotations[c.ANNOTATION_SHARD_LIST] = work.only.uri
        shards = len(work.only.shards)
    container = _container(work.pool, args, pod)
    indexes = math.ceil(shards / block)
    spec = _patch_pod_spec(_pod_spec(work.pool, container, pod.volumes), patch)
    return _indexed_job(work, indexes, spec, annotations)


def _merge_env(
    env: list[dict[str, Any]], extra: tuple[Mapping[str, Any], ...]
) -> list[dict[str, Any]]:
    """The operator's env with a podTemplate's: an entry of the same name replaces its own."""
    names = {e["name"] for e in extra}
    return [e for e in env if e["name"] not in names] + [dict(e) for e in extra]


def _patch_pod_spec(spec: dict[str, Any], patch: PodTemplate) -> dict[str, Any]:
    """A pod spec with a podTemplate's spec fields (parse_pod_template refused owned ones)."""
    if patch.host_network is not None:
        spec["hostNetwork"] = patch.host_network
        if patch.host_network:
            spec["dnsPolicy"] = "ClusterFirstWithHostNet"
    if patch.dns_policy:
        spec["dnsPolicy"] = patch.dns_policy
    if patch.runtime_class:
        spec["runtimeClassName"] = patch.runtime_class
    spec["containers"] += [dict(s) for s in patch.sidecars]
    return spec


@dataclass
class PodParts:
    """The pieces a builder adds to a pod as it goes: env, volumes, mounts, resources."""

    env: list[dict[str, Any]]
    volumes: list[dict[str, Any]] = field(default_factory=list)
    mounts: list[dict[str, Any]] = field(default_factory=list)
    gpus: int = 0


def _llm_parts(work: StageJob, pod: PodParts) -> None:
    """What LLM stages add: GPUs, vLLM's IPC path, the API key, the model volume."""
    engine = work.job.engine
    rewrite = work.placement.gpu
    if engine.type == "vllm":
        pod.gpus = engine.tensor_parallel_size
        # vLLM's IPC sockets: a UNIX socket path must stay under 108 bytes whatever TMPDIR
        # is, and /dev/shm (tmpfs, present in every pod) is where such sockets belong.
        pod.env.append({"name": "VLLM_RPC_BASE_PATH", "value": c.SHM_MOUNT})
    elif rewrite.api_key_secret is not None:
        secret = rewrite.api_key_secret
        pod.env.append(_secret_env(engine.api_key_env, secret.name, secret.key, optional=False))
    if rewrite.hub_token_secret is not None:
        token = rewrite.hub_token_secret
        pod.env.append(_secret_env(HF_TOKEN_ENV, token.name, token.key, optional=False))
    if rewrite.model_claim:
        claim = {"claimName": rewrite.model_claim, "readOnly": rewrite.model_claim_read_only}
        pod.volumes.append({"name": "models", "persistentVolumeClaim": claim})
        pod.mounts.append({"name": "models", "mountPath": c.MODELS_MOUNT})
        overrides = {
            "PALIMPSEST_MODEL_CACHE": f"{c.MODELS_MOUNT}/cache",
            "HF_HOME": f"{c.MODELS_MOUNT}/huggingface",
        }
        if rewrite.model_claim_read_only:
            # A read-only claim holds the weights: the hub client must not try to download.
            overrides["HF_HUB_OFFLINE"] = "1"
        pod.env = [e for e in pod.env if e["name"] not in overrides]
        pod.env += [{"name": k, "value": v} for k, v in overrides.items()]
    if engine.type == "vllm":
        pod.volumes.append({"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM_SIZE}})
        pod.mounts.append({"name": "shm", "mountPath": c.SHM_MOUNT})


# --- pieces ---------------------------------------------------------------------------------


def job_labels(owner_name: str, stage: StageRef) -> dict[str, str]:
    return {
        c.LABEL_MANAGED_BY: c.MANAGED_BY,
        c.LABEL_JOB: _label_value(owner_name),
        c.LABEL_STAGE: stage.kind,
        c.LABEL_STAGE_ID: stage.stage_id,
    }


def job_labels_selector(owner_name: str) -> str:
    """The label selector of the Jobs one RewriteJob owns."""
    return f"{c.LABEL_MANAGED_BY}={c.MANAGED_BY},{c.LABEL_JOB}={_label_value(owner_name)}"


def _indexed_job(
    work: StageJob, completions: int, pod: dict[str, Any], annotations: Mapping[str, str]
) -> dict[str, Any]:
    placement = work.placement
    labels = job_labels(work.owner.name, work.stages[-1])
    patch = work.pool.pod_template
    pod_labels = {**patch.labels, **labels}
    pod_meta: dict[str, Any] = {"labels": pod_labels}
    if patch.annotations:
        pod_meta["annotations"] = dict(patch.annotations)
    if placement.queue_name:
        labels[c.LABEL_KUEUE_QUEUE] = placement.queue_name
    job: dict[str, Any] = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": work.name,
            "namespace": work.owner.namespace,
            "labels": labels,
            "annotations": dict(annotations),
            "ownerReferences": [work.owner.reference()],
        },
        "spec": {
            "completionMode": "Indexed",
            "completions": completions,
            "parallelism": max(1, min(work.pool.parallelism, completions)),
            "backoffLimitPerIndex": placement.retries.per_shard,
            "maxFailedIndexes": min(placement.retries.max_failed_shards, completions),
            "podReplacementPolicy": "Failed",
            "podFailurePolicy": {
                "rules": [
                    # Rules cannot match a condition's reason: every disruption is ignored here
                    # and the operator counts kubelet evictions itself (evictions.py).
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
            # Kueue admits a queued Job by unsuspending it: it must be created suspended.
            "suspend": placement.suspend or bool(placement.queue_name),
            "template": {"metadata": pod_meta, "spec": pod},
        },
    }
    if work.pool.active_deadline_seconds is not None:
        job["spec"]["activeDeadlineSeconds"] = work.pool.active_deadline_seconds
    return job


def _pod_spec(
    pool: PoolPlacement, container: dict[str, Any], volumes: list[dict[str, Any]]
) -> dict[str, Any]:
    uid = runtime.RUN_AS_UID
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 30,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": uid,
            "runAsGroup": uid,
            "fsGroup": uid,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "nodeSelector": dict(pool.node_selector),
        "containers": [container],
        "volumes": list(volumes),
    }
    if pool.tolerations:
        spec["tolerations"] = [dict(t) for t in pool.tolerations]
    if pool.priority_class:
        spec["priorityClassName"] = pool.priority_class
    return spec


def _container(pool: PoolPlacement, args: list[str], pod: PodParts) -> dict[str, Any]:
    return {
        "name": "worker",
        "image": pool.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["palimpsest"],
        "args": args,
        "env": pod.env,
        "resources": _resources(pool.resources, pod.gpus),
        "volumeMounts": list(pod.mounts),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }


def _resources(resources: Resources, gpus: int) -> dict[str, Any]:
    values = {k: v for k, v in (("cpu", resources.cpu), ("memory", resources.memory)) if v}
    if gpus:
        values["nvidia.com/gpu"] = str(gpus)
    if not values:
        return {}
    return {"requests": dict(values), "limits": dict(values)}


def _whole_cpus(resources: Resources) -> int:
    """Linter processes for a CPU request: its whole cores, at least one."""
    cpu = resources.cpu or "1"
    if cpu.endswith("m"):
        return max(1, int(float(cpu[:-1]) // 1000))
    return max(1, int(float(cpu)))


def _cache_env() -> list[dict[str, Any]]:
    """Every tool's cache under the cache volume, HOME on /tmp (the root is read-only)."""
    return [{"name": k, "value": v} for k, v in runtime.CACHE_ENV.items()]


def _s3_env(job: Job, placement: Placement) -> list[dict[str, Any]]:
    """S3 settings as the AWS SDKs read them (the worker reads its job document before it
    knows the job's storage settings; model downloads from s3:// read them too), and the
    credentials from the storage Secret."""
    env: list[dict[str, Any]] = []
    if job.storage.endpoint:
        env.append({"name": "AWS_ENDPOINT_URL_S3", "value": job.storage.endpoint})
    if job.storage.region:
        env.append({"name": "AWS_DEFAULT_REGION", "value": job.storage.region})
    secret = placement.storage_secret
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
