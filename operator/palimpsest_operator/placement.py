"""Kubernetes placement of a RewriteJob: where and how its pods run, parsed once.

The portable job (`palimpsest.job.Job`) says what to do with the data; this says what the
cluster needs to run it: images, resources, node selectors, tolerations, volumes, the Secrets
pods read, parallelism, retries, the Kueue queue and suspension. Each stage's pool (from the
stage registry) picks its section: CPU stages take `spec.filter`, GPU stages `spec.rewrite`.
Bad values raise ValueError naming the field, like the job parser. The keys parsed here are
exactly `palimpsest.job.CLUSTER_KEYS` (a unit test keeps them equal).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from palimpsest import __version__
from palimpsest.spec import boolean, integer, mapping, opt_string, string
from palimpsest.stages.registry import Pool

IMAGE_REPOSITORY: Final = "ghcr.io/palimpsest-dev"
DEFAULT_IMAGES: Final[Mapping[Pool, str]] = {
    Pool.CPU: f"{IMAGE_REPOSITORY}/palimpsest-filter:{__version__}",
    Pool.GPU: f"{IMAGE_REPOSITORY}/palimpsest-rewrite:{__version__}",
}
"""The released images of this version (the release workflow tags them with the package's
version, without a leading v)."""

CPU_POOL_SELECTOR: Final[Mapping[str, str]] = {"palimpsest.dev/pool": "cpu"}
GPU_POOL_SELECTOR: Final[Mapping[str, str]] = {"palimpsest.dev/pool": "gpu"}
GPU_TOLERATIONS: Final = ({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},)

DEFAULT_FILTER_PARALLELISM: Final = 10
"""Filter pods at once when spec.filter.parallelism is not set."""
DEFAULT_RETRIES: Final = 3
"""Retries of one Job index (spec.retries.perShard)."""

DEFAULT_MODEL_CACHE_SIZE: Final = "100Gi"
"""Size cap of the rewrite pods' cache emptyDir (the hub cache at HF_HOME, vLLM's compile
caches) when no model PVC is named: spec.rewrite.engine.modelCacheSize overrides it."""

_QUANTITY: Final = re.compile(r"^[0-9]+(\.[0-9]+)?([mkKMGTPE]i?)?$")

RESERVED_VOLUMES: Final = frozenset({"tmp", "cache", "models", "shm", "prompts"})
"""Volume names the Job builders use; a podTemplate may not add volumes of these names."""
WORKER_CONTAINER: Final = "worker"
WORKER_PATCH_KEYS: Final = frozenset({"name", "env", "volumeMounts"})
"""What a podTemplate may add to the worker container; the rest (command, args, image,
securityContext, resources) is the operator's."""
POD_SPEC_PATCH_KEYS: Final = frozenset(
    {"hostNetwork", "dnsPolicy", "runtimeClassName", "volumes", "containers"}
)
"""Pod spec fields a podTemplate may set; securityContext, nodeSelector, tolerations,
restartPolicy and the rest are the operator's (or have their own spec fields)."""
_OWNED_LABEL_PREFIXES: Final = (
    "palimpsest.dev/",
    "app.kubernetes.io/managed-by",
    "kueue.x-k8s.io/",
)


@dataclass(frozen=True)
class Resources:
    """Requests (also used as limits) of a pod's main container; None leaves one unset."""

    cpu: str | None = None
    memory: str | None = None


@dataclass(frozen=True)
class SecretKey:
    name: str
    key: str


@dataclass(frozen=True)
class PodTemplate:
    """A validated patch of a stage's pods (spec.filter.podTemplate, spec.rewrite.podTemplate).

    Merged by the Job builders: labels and annotations added to the pod's, hostNetwork (with
    dnsPolicy ClusterFirstWithHostNet unless given), runtimeClassName, extra volumes,
    extra env and volumeMounts of the worker container (an env of the same name replaces
    the operator's), and sidecar containers after the worker.
    """

    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    host_network: bool | None = None
    dns_policy: str | None = None
    runtime_class: str | None = None
    volumes: tuple[Mapping[str, Any], ...] = ()
    env: tuple[Mapping[str, Any], ...] = ()
    volume_mounts: tuple[Mapping[str, Any], ...] = ()
    sidecars: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class PoolPlacement:
    """How the pods of one pool's stages run."""

    image: str
    resources: Resources
    parallelism: int
    node_selector: Mapping[str, str]
    tolerations: tuple[Mapping[str, Any], ...] = ()
    priority_class: str | None = None
    pod_template: PodTemplate = field(default_factory=PodTemplate)
    active_deadline_seconds: int | None = None
    """Seconds the stage's Job may run in all, retries included (None: no limit)."""


@dataclass(frozen=True)
class RewritePlacement(PoolPlacement):
    """The GPU pool's pods, with what only they need."""

    prompts_config_map: str | None = None
    model_claim: str | None = None
    """A PVC mounted at /models (model weights and their cache)."""
    model_claim_read_only: bool = False
    api_key_secret: SecretKey | None = None
    hub_token_secret: SecretKey | None = None
    """A Secret key given to rewrite pods as HF_TOKEN (gated hub models)."""
    model_cache_size: str = DEFAULT_MODEL_CACHE_SIZE
    """Size cap of the cache emptyDir holding HF_HOME when no model PVC is named."""
    shards_per_pod: int | None = None
    """None: sized so a Job has at most jobs.MAX_REWRITE_INDEXES indexes."""


@dataclass(frozen=True)
class RetrySpec:
    per_shard: int = DEFAULT_RETRIES
    max_failed_shards: int = 0


@dataclass(frozen=True)
class Placement:
    """Everything about the cluster side of one RewriteJob."""

    storage_secret: str | None = None
    """A Secret with AWS_* keys for S3 (None: workload identity)."""
    cpu: PoolPlacement = field(
        default_factory=lambda: PoolPlacement(
            DEFAULT_IMAGES[Pool.CPU],
            Resources(cpu="1", memory="2Gi"),
            DEFAULT_FILTER_PARALLELISM,
            dict(CPU_POOL_SELECTOR),
        )
    )
    gpu: RewritePlacement = field(
        default_factory=lambda: RewritePlacement(
            DEFAULT_IMAGES[Pool.GPU], Resources(), 1, dict(GPU_POOL_SELECTOR), GPU_TOLERATIONS
        )
    )
    retries: RetrySpec = field(default_factory=RetrySpec)
    queue_name: str | None = None
    suspend: bool = False

    def pool(self, pool: Pool) -> PoolPlacement:
        return self.cpu if pool is Pool.CPU else self.gpu


def parse_placement(manifest: Mapping[str, Any]) -> Placement:
    """The placement of a RewriteJob manifest (its portable part is parsed by parse_job)."""
    spec = mapping(manifest.get("spec"), "spec")
    storage = mapping(spec.get("storage") or {}, "spec.storage")
    secret = storage.get("secretRef")
    retries = mapping(spec.get("retries") or {}, "spec.retries")
    defaults = Placement()
    return Placement(
        storage_secret=None
        if secret is None
        else string(
            mapping(secret, "spec.storage.secretRef").get("name"), "spec.storage.secretRef.name"
        ),
        cpu=_cpu(mapping(spec.get("filter") or {}, "spec.filter"), defaults.cpu),
        gpu=_gpu(mapping(spec.get("rewrite") or {}, "spec.rewrite"), defaults.gpu),
        retries=RetrySpec(
            per_shard=integer(
                retries.get("perShard", DEFAULT_RETRIES), "spec.retries.perShard", minimum=0
            ),
            max_failed_shards=integer(
                retries.get("maxFailedShards", 0), "spec.retries.maxFailedShards", minimum=0
            ),
        ),
        queue_name=opt_string(spec.get("queueName"), "spec.queueName"),
        suspend=boolean(spec.get("suspend", False), "spec.suspend"),
    )


def _cpu(data: Mapping[str, Any], default: PoolPlacement) -> PoolPlacement:
    return PoolPlacement(
        image=string(data.get("image", default.image), "spec.filter.image"),
        resources=_resources(data.get("resources"), "spec.filter.resources", default.resources),
        parallelism=integer(
            data.get("parallelism", default.parallelism), "spec.filter.parallelism", minimum=1
        ),
        node_selector=_node_selector(data, default, "spec.filter"),
        tolerations=_tolerations(data, default, "spec.filter"),
        pod_template=parse_pod_template(data.get("podTemplate"), "spec.filter.podTemplate"),
        active_deadline_seconds=_deadline(data, "spec.filter"),
    )


def _node_selector(data: Mapping[str, Any], default: PoolPlacement, where: str) -> dict[str, str]:
    selector = mapping(data.get("nodeSelector", default.node_selector), f"{where}.nodeSelector")
    return {str(k): string(v, f"{where}.nodeSelector.{k}") for k, v in selector.items()}


def _tolerations(
    data: Mapping[str, Any], default: PoolPlacement, where: str
) -> tuple[Mapping[str, Any], ...]:
    tolerations = data.get("tolerations", [dict(t) for t in default.tolerations])
    if not isinstance(tolerations, list) or not all(isinstance(t, Mapping) for t in tolerations):
        raise ValueError(f"{where}.tolerations: must be a list of tolerations")
    return tuple(dict(t) for t in tolerations)


def _gpu(data: Mapping[str, Any], default: RewritePlacement) -> RewritePlacement:
    where = "spec.rewrite"
    engine = mapping(data.get("engine") or {}, f"{where}.engine")
    prompts = mapping(data.get("prompts") or {}, f"{where}.prompts")
    volume = engine.get("modelVolume")
    api_key = engine.get("apiKeySecretRef")
    hub_token = engine.get("hubTokenSecretRef")
    shards_per_pod = data.get("shardsPerPod")
    return RewritePlacement(
        image=string(data.get("image", default.image), f"{where}.image"),
        resources=_resources(data.get("resources"), f"{where}.resources", default.resources),
        parallelism=integer(data.get("parallelism", 1), f"{where}.parallelism", minimum=1),
        node_selector=_node_selector(data, default, where),
        tolerations=_tolerations(data, default, where),
        priority_class=opt_string(data.get("priorityClassName"), f"{where}.priorityClassName"),
        prompts_config_map=opt_string(
            prompts.get("configMapName"), f"{where}.prompts.configMapName"
        ),
        model_claim=None
        if volume is None
        else string(
            mapping(volume, f"{where}.engine.modelVolume").get("claimName"),
            f"{where}.engine.modelVolume.claimName",
        ),
        model_claim_read_only=bool(volume and volume.get("readOnly", False)),
        api_key_secret=None
        if api_key is None
        else _secret_key(api_key, f"{where}.engine.apiKeySecretRef"),
        hub_token_secret=None
        if hub_token is None
        else _secret_key(hub_token, f"{where}.engine.hubTokenSecretRef"),
        model_cache_size=_quantity(
            str(engine.get("modelCacheSize", default.model_cache_size)),
            f"{where}.engine.modelCacheSize",
        ),
        pod_template=parse_pod_template(data.get("podTemplate"), f"{where}.podTemplate"),
        active_deadline_seconds=_deadline(data, where),
        shards_per_pod=None
        if shards_per_pod is None
        else integer(shards_per_pod, f"{where}.shardsPerPod", minimum=1),
    )


def _deadline(data: Mapping[str, Any], where: str) -> int | None:
    value = data.get("activeDeadlineSeconds")
    if value is None:
        return None
    return integer(value, f"{where}.activeDeadlineSeconds", minimum=1)


def _secret_key(value: Any, where: str) -> SecretKey:
    data = mapping(value, where)
    return SecretKey(
        string(data.get("name"), f"{where}.name"), string(data.get("key"), f"{where}.key")
    )


def _resources(value: Any, where: str, default: Resources) -> Resources:
    if value is None:
        return default
    data = mapping(value, where)
    out: dict[str, str | None] = {}
    for key in ("cpu", "memory"):
        item = data.get(key)
        if item is None:
            out[key] = getattr(default, key)
            continue
        out[key] = _quantity(str(item), f"{where}.{key}")
    return Resources(**out)


def _quantity(text: str, where: str) -> str:
    if not _QUANTITY.match(text):
        raise ValueError(f"{where}: not a Kubernetes quantity: {text!r}")
    return text


def parse_pod_template(value: Any, where: str) -> PodTemplate:
    """A podTemplate patch; a field the operator owns raises ValueError naming it."""
    if value is None:
        return PodTemplate()
    data = mapping(value, where)
    _only(data, {"metadata", "spec"}, where)
    meta = mapping(data.get("metadata") or {}, f"{where}.metadata")
    _only(meta, {"labels", "annotations"}, f"{where}.metadata")
    spec = mapping(data.get("spec") or {}, f"{where}.spec")
    _only(spec, POD_SPEC_PATCH_KEYS, f"{where}.spec")
    labels = _strings(meta.get("labels"), f"{where}.metadata.labels")
    for key in labels:
        if key.startswith(_OWNED_LABEL_PREFIXES):
            raise ValueError(f"{where}.metadata.labels.{key}: owned by the operator")
    volumes = _named_list(spec.get("volumes"), f"{where}.spec.volumes")
    for volume in volumes:
        if volume["name"] in RESERVED_VOLUMES:
            raise ValueError(f"{where}.spec.volumes.{volume['name']}: owned by the operator")
    worker: Mapping[str, Any] = {}
    sidecars = []
    for container in _named_list(spec.get("containers"), f"{where}.spec.containers"):
        if container["name"] == WORKER_CONTAINER:
            worker = container
        else:
            string(container.get("image"), f"{where}.spec.containers.{container['name']}.image")
            sidecars.append(container)
    for key in worker:
        if key not in WORKER_PATCH_KEYS:
            raise ValueError(
                f"{where}.spec.containers.{WORKER_CONTAINER}.{key}: owned by the operator"
            )
    host_network = spec.get("hostNetwork")
    return PodTemplate(
        labels=labels,
        annotations=_strings(meta.get("annotations"), f"{where}.metadata.annotations"),
        host_network=None
        if host_network is None
        else boolean(host_network, f"{where}.spec.hostNetwork"),
        dns_policy=opt_string(spec.get("dnsPolicy"), f"{where}.spec.dnsPolicy"),
        runtime_class=opt_string(spec.get("runtimeClassName"), f"{where}.spec.runtimeClassName"),
        volumes=tuple(volumes),
        env=tuple(_named_list(worker.get("env"), f"{where}.spec.containers.worker.env")),
        volume_mounts=tuple(
            _named_list(worker.get("volumeMounts"), f"{where}.spec.containers.worker.volumeMounts")
        ),
        sidecars=tuple(sidecars),
    )


def _only(data: Mapping[str, Any], allowed: frozenset[str] | set[str], where: str) -> None:
    for key in data:
        if key not in allowed:
            raise ValueError(f"{where}.{key}: not allowed (owned by the operator or unknown)")


def _strings(value: Any, where: str) -> dict[str, str]:
    data = mapping(value or {}, where)
    return {str(k): string(v, f"{where}.{k}") for k, v in data.items()}


def _named_list(value: Any, where: str) -> list[dict[str, Any]]:
    """A list of objects each with a unique non-empty `name`."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f"{where}: must be a list")
    out: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        entry = dict(mapping(item, f"{where}[{i}]"))
        entry["name"] = string(entry.get("name"), f"{where}[{i}].name")
        if any(e["name"] == entry["name"] for e in out):
            raise ValueError(f"{where}.{entry['name']}: given twice")
        out.append(entry)
    return out
