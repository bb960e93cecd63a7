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

_QUANTITY: Final = re.compile(r"^[0-9]+(\.[0-9]+)?([mkKMGTPE]i?)?$")


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
class PoolPlacement:
    """How the pods of one pool's stages run."""

    image: str
    resources: Resources
    parallelism: int
    node_selector: Mapping[str, str]
    tolerations: tuple[Mapping[str, Any], ...] = ()
    priority_class: str | None = None


@dataclass(frozen=True)
class RewritePlacement(PoolPlacement):
    """The GPU pool's pods, with what only they need."""

    prompts_config_map: str | None = None
    model_claim: str | None = None
    """A PVC mounted at /models (model weights and their cache)."""
    model_claim_read_only: bool = False
    api_key_secret: SecretKey | None = None
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
        node_selector=dict(default.node_selector),
    )


def _gpu(data: Mapping[str, Any], default: RewritePlacement) -> RewritePlacement:
    where = "spec.rewrite"
    engine = mapping(data.get("engine") or {}, f"{where}.engine")
    prompts = mapping(data.get("prompts") or {}, f"{where}.prompts")
    volume = engine.get("modelVolume")
    api_key = engine.get("apiKeySecretRef")
    shards_per_pod = data.get("shardsPerPod")
    tolerations = data.get("tolerations", [dict(t) for t in default.tolerations])
    if not isinstance(tolerations, list) or not all(isinstance(t, Mapping) for t in tolerations):
        raise ValueError(f"{where}.tolerations: must be a list of tolerations")
    selector = mapping(data.get("nodeSelector", default.node_selector), f"{where}.nodeSelector")
    return RewritePlacement(
        image=string(data.get("image", default.image), f"{where}.image"),
        resources=_resources(data.get("resources"), f"{where}.resources", default.resources),
        parallelism=integer(data.get("parallelism", 1), f"{where}.parallelism", minimum=1),
        node_selector={str(k): string(v, f"{where}.nodeSelector.{k}") for k, v in selector.items()},
        tolerations=tuple(dict(t) for t in tolerations),
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
        shards_per_pod=None
        if shards_per_pod is None
        else integer(shards_per_pod, f"{where}.shardsPerPod", minimum=1),
    )


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
