"""A RewriteJob spec, parsed once into frozen dataclasses.

The operator (from the custom resource) and the local runner (from a RewriteJob YAML file)
read the same manifest through `parse_job`, so both see the same defaults and reject the same
mistakes. Every bad value raises `ValueError` naming the field as it is spelled in the
manifest (e.g. `spec.filter.minScore`). The CRD schema checks shapes first on a cluster;
this module also guards the local path, where no API server validates anything.

From a parsed job come the pipeline's own settings (`FilterSettings`, `EngineSettings`,
`PlanSettings`) and the job's stage ids (`job_stage_refs`, through `chain.job_stages`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from palimpsest.chain import RECIPES, REWRITE_STAGES, STAGE_PROMPTS, StageRef, job_stages
from palimpsest.engines.base import SamplingSettings
from palimpsest.engines.settings import EngineSettings
from palimpsest.filtering import FilterSettings
from palimpsest.plan import PlanSettings
from palimpsest.prompts import Prompt, load_stage_prompt
from palimpsest.records import Fields
from palimpsest.storage import S3Settings

API_VERSION: Final = "palimpsest.dev/v1alpha1"
KIND: Final = "RewriteJob"

DEFAULT_RECORDS_PER_SHARD: Final = 10_000
DEFAULT_MIN_SCORE: Final = 7.0
DEFAULT_TIME_LIMIT: Final = 60.0  # seconds one sample may spend in pylint
DEFAULT_FILTER_PARALLELISM: Final = 10  # filter pods at once
DEFAULT_FILTER_IMAGE: Final = "ghcr.io/palimpsest-dev/palimpsest-filter:0.1.0"
DEFAULT_REWRITE_IMAGE: Final = "ghcr.io/palimpsest-dev/palimpsest-rewrite:0.1.0"
DEFAULT_LANGUAGE: Final = "Japanese"  # target language of the instruct translate stage
DEFAULT_RETRIES: Final = 3  # retries of one Job index
GPU_POOL_SELECTOR: Final[Mapping[str, str]] = {"palimpsest.dev/pool": "gpu"}
GPU_TOLERATIONS: Final = ({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},)

INPUT_FORMATS: Final = ("auto", "jsonl", "parquet")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?([mKMGTPE]i?)?$")


@dataclass(frozen=True)
class Resources:
    """Requests (also used as limits) of a pod's main container; None leaves one unset."""

    cpu: str | None = None
    memory: str | None = None


@dataclass(frozen=True)
class InputSpec:
    uri: str
    format: str = "auto"
    text_field: str = "text"
    id_field: str = "id"


@dataclass(frozen=True)
class StorageSpec:
    """How S3 is reached; `secret_name` names a Secret with AWS_* keys (None: workload identity)."""

    endpoint: str | None = None
    region: str | None = None
    secret_name: str | None = None

    def s3_settings(self) -> S3Settings:
        return S3Settings(endpoint_url=self.endpoint, region=self.region)


@dataclass(frozen=True)
class FilterSpec:
    min_score: float = DEFAULT_MIN_SCORE
    time_limit: float = DEFAULT_TIME_LIMIT
    workers: int | None = None  # linter processes per pod; None: one per requested CPU
    parallelism: int = DEFAULT_FILTER_PARALLELISM
    image: str = DEFAULT_FILTER_IMAGE
    resources: Resources = Resources(cpu="1", memory="2Gi")


@dataclass(frozen=True)
class SecretKey:
    name: str
    key: str


@dataclass(frozen=True)
class RewriteSpec:
    engine: EngineSettings
    image: str = DEFAULT_REWRITE_IMAGE
    prompts_config_map: str | None = None
    language: str = DEFAULT_LANGUAGE
    model_claim: str | None = None  # a PVC mounted at /models
    model_claim_read_only: bool = False
    api_key_secret: SecretKey | None = None
    shards_per_pod: int | None = None  # None: sized so a Job has at most MAX_REWRITE_INDEXES
    parallelism: int = 1
    resources: Resources = Resources()
    node_selector: Mapping[str, str] = field(default_factory=lambda: dict(GPU_POOL_SELECTOR))
    tolerations: tuple[Mapping[str, Any], ...] = GPU_TOLERATIONS
    priority_class: str | None = None


@dataclass(frozen=True)
class RetrySpec:
    per_shard: int = DEFAULT_RETRIES
    max_failed_shards: int = 0


@dataclass(frozen=True)
class JobSpec:
    """One RewriteJob: its identity and its parsed spec."""

    name: str
    namespace: str
    recipe: str
    stages: tuple[str, ...]
    input: InputSpec
    output_uri: str
    storage: StorageSpec
    sharding: PlanSettings
    filter: FilterSpec
    rewrite: RewriteSpec | None
    retries: RetrySpec = RetrySpec()
    queue_name: str | None = None
    suspend: bool = False
    dry_run: bool = False

    @property
    def fields(self) -> Fields:
        return Fields(text=self.input.text_field, id=self.input.id_field)

    @property
    def rewrite_stages(self) -> tuple[str, ...]:
        return tuple(s for s in self.stages if s in REWRITE_STAGES)

    def filter_settings(self, workers: int = 1) -> FilterSettings:
        """The filter's settings; `workers` only applies when the spec sets none."""
        return FilterSettings(
            min_score=self.filter.min_score,
            time_limit=self.filter.time_limit,
            workers=self.filter.workers or workers,
            fields=self.fields,
        )

    def engine_settings(self) -> EngineSettings | None:
        return self.rewrite.engine if self.rewrite else None

    def stage_extra(self) -> dict[str, dict[str, Any]]:
        """Settings outside the engine that decide a stage's outputs."""
        if "translate" in self.stages and self.rewrite is not None:
            return {"translate": {"language": self.rewrite.language}}
        return {}


def parse_job(manifest: Mapping[str, Any], namespace: str = "default") -> JobSpec:
    """A whole RewriteJob manifest (as applied or as read from YAML) as a `JobSpec`."""
    metadata = _mapping(manifest.get("metadata") or {}, "metadata")
    name = _str(metadata.get("name"), "metadata.name")
    spec = _mapping(manifest.get("spec"), "spec")
    recipe = _choice(spec.get("recipe"), "spec.recipe", tuple(RECIPES))
    stages = _stages(spec.get("stages"), recipe)
    rewrite = None
    if any(s in REWRITE_STAGES for s in stages):
        rewrite = _rewrite(_mapping(spec.get("rewrite"), "spec.rewrite"), "spec.rewrite")
    job = JobSpec(
        name=name,
        namespace=str(metadata.get("namespace") or namespace),
        recipe=recipe,
        stages=stages,
        input=_input(_mapping(spec.get("input"), "spec.input")),
        output_uri=_uri(_mapping(spec.get("output"), "spec.output").get("uri"), "spec.output.uri"),
        storage=_storage(_mapping(spec.get("storage") or {}, "spec.storage")),
        sharding=_sharding(_mapping(spec.get("sharding") or {}, "spec.sharding")),
        filter=_filter(_mapping(spec.get("filter") or {}, "spec.filter")),
        rewrite=rewrite,
        retries=_retries(_mapping(spec.get("retries") or {}, "spec.retries")),
        queue_name=_opt_str(spec.get("queueName"), "spec.queueName"),
        suspend=_bool(spec.get("suspend", False), "spec.suspend"),
        dry_run=_bool(spec.get("dryRun", False), "spec.dryRun"),
    )
    _check_paths(job)
    return job


def load_job_prompts(job: JobSpec, override_dir: Path | None = None) -> dict[str, Prompt]:
    """The prompt of each rewrite stage of the job, keyed by stage kind."""
    return {
        kind: load_stage_prompt(STAGE_PROMPTS[kind], override_dir) for kind in job.rewrite_stages
    }


def job_stage_refs(
    job: JobSpec, plan_id: str, prompts: Mapping[str, Prompt]
) -> tuple[StageRef, ...]:
    """The job's stages with their ids, exactly as the workers compute them."""
    return job_stages(
        plan_id,
        job.recipe,
        job.stages,
        job.filter_settings() if "filter" in job.stages else None,
        job.engine_settings(),
        prompts,
        job.input.text_field,
        job.stage_extra(),
    )


# --- sections -----------------------------------------------------------------------------


def _stages(value: Any, recipe: str) -> tuple[str, ...]:
    if value is None:
        return RECIPES[recipe]
    if not isinstance(value, list) or not value:
        raise ValueError("spec.stages: must be a non-empty list")
    stages = tuple(_str(s, "spec.stages[]") for s in value)
    allowed = RECIPES[recipe]
    unknown = [s for s in stages if s not in allowed]
    if unknown:
        raise ValueError(f"spec.stages: {unknown} not in recipe {recipe} ({', '.join(allowed)})")
    if list(stages) != [s for s in allowed if s in stages]:
        raise ValueError(f"spec.stages: {list(stages)} out of order ({', '.join(allowed)})")
    return stages


def _input(data: Mapping[str, Any]) -> InputSpec:
    return InputSpec(
        uri=_uri(data.get("uri"), "spec.input.uri"),
        format=_choice(data.get("format", "auto"), "spec.input.format", INPUT_FORMATS),
        text_field=_str(data.get("textField", "text"), "spec.input.textField"),
        id_field=_str(data.get("idField", "id"), "spec.input.idField"),
    )


def _storage(data: Mapping[str, Any]) -> StorageSpec:
    secret = data.get("secretRef")
    secret_name = None
    if secret is not None:
        secret_name = _str(
            _mapping(secret, "spec.storage.secretRef").get("name"), "spec.storage.secretRef.name"
        )
    return StorageSpec(
        endpoint=_opt_str(data.get("endpoint"), "spec.storage.endpoint"),
        region=_opt_str(data.get("region"), "spec.storage.region"),
        secret_name=secret_name,
    )


def _sharding(data: Mapping[str, Any]) -> PlanSettings:
    records = _int(
        data.get("recordsPerShard", DEFAULT_RECORDS_PER_SHARD),
        "spec.sharding.recordsPerShard",
        minimum=1,
    )
    return PlanSettings(records_per_shard=records)


def _filter(data: Mapping[str, Any]) -> FilterSpec:
    min_score = _float(data.get("minScore", DEFAULT_MIN_SCORE), "spec.filter.minScore")
    if not 0.0 <= min_score <= 10.0:
        raise ValueError(f"spec.filter.minScore: must be within 0..10, got {min_score}")
    time_limit = _float(
        data.get("timeLimitSeconds", DEFAULT_TIME_LIMIT), "spec.filter.timeLimitSeconds"
    )
    if time_limit <= 0:
        raise ValueError(f"spec.filter.timeLimitSeconds: must be > 0, got {time_limit}")
    workers = data.get("workers")
    return FilterSpec(
        min_score=min_score,
        time_limit=time_limit,
        workers=None if workers is None else _int(workers, "spec.filter.workers", minimum=1),
        parallelism=_int(
            data.get("parallelism", DEFAULT_FILTER_PARALLELISM),
            "spec.filter.parallelism",
            minimum=1,
        ),
        image=_str(data.get("image", DEFAULT_FILTER_IMAGE), "spec.filter.image"),
        resources=_resources(
            data.get("resources"), "spec.filter.resources", FilterSpec().resources
        ),
    )


def _rewrite(data: Mapping[str, Any], where: str) -> RewriteSpec:
    engine_data = _mapping(data.get("engine"), f"{where}.engine")
    prompts = _mapping(data.get("prompts") or {}, f"{where}.prompts")
    volume = data.get("engine", {}).get("modelVolume")
    api_key = engine_data.get("apiKeySecretRef")
    shards_per_pod = data.get("shardsPerPod")
    tolerations = data.get("tolerations", list(GPU_TOLERATIONS))
    if not isinstance(tolerations, list) or not all(isinstance(t, Mapping) for t in tolerations):
        raise ValueError(f"{where}.tolerations: must be a list of tolerations")
    node_selector = _mapping(
        data.get("nodeSelector", dict(GPU_POOL_SELECTOR)), f"{where}.nodeSelector"
    )
    return RewriteSpec(
        engine=_engine(
            engine_data,
            _mapping(data.get("sampling") or {}, f"{where}.sampling"),
            f"{where}.engine",
        ),
        image=_str(data.get("image", DEFAULT_REWRITE_IMAGE), f"{where}.image"),
        prompts_config_map=_opt_str(prompts.get("configMapName"), f"{where}.prompts.configMapName"),
        language=_str(data.get("language", DEFAULT_LANGUAGE), f"{where}.language"),
        model_claim=None
        if volume is None
        else _str(
            _mapping(volume, f"{where}.engine.modelVolume").get("claimName"),
            f"{where}.engine.modelVolume.claimName",
        ),
        model_claim_read_only=bool(volume and volume.get("readOnly", False)),
        api_key_secret=None
        if api_key is None
        else SecretKey(
            _str(api_key.get("name"), f"{where}.engine.apiKeySecretRef.name"),
            _str(api_key.get("key"), f"{where}.engine.apiKeySecretRef.key"),
        ),
        shards_per_pod=None
        if shards_per_pod is None
        else _int(shards_per_pod, f"{where}.shardsPerPod", minimum=1),
        parallelism=_int(data.get("parallelism", 1), f"{where}.parallelism", minimum=1),
        resources=_resources(data.get("resources"), f"{where}.resources", Resources()),
        node_selector={
            str(k): _str(v, f"{where}.nodeSelector.{k}") for k, v in node_selector.items()
        },
        tolerations=tuple(dict(t) for t in tolerations),
        priority_class=_opt_str(data.get("priorityClassName"), f"{where}.priorityClassName"),
    )


_ENGINE_FIELDS: Final[Mapping[str, str]] = {
    "type": "type",
    "model": "model",
    "revision": "revision",
    "baseURL": "base_url",
    "tensorParallelSize": "tensor_parallel_size",
    "maxModelLen": "max_model_len",
    "gpuMemoryUtilization": "gpu_memory_utilization",
    "dtype": "dtype",
    "maxInFlight": "max_in_flight",
}
_ENGINE_EXTRA: Final = frozenset({"modelVolume", "apiKeySecretRef", "engineArgs"})
_FLOAT_FIELDS: Final = frozenset({"gpu_memory_utilization"})
_SAMPLING_FIELDS: Final[Mapping[str, str]] = {
    "temperature": "temperature",
    "topP": "top_p",
    "maxTokens": "max_tokens",
    "n": "n",
}


def _engine(data: Mapping[str, Any], sampling: Mapping[str, Any], where: str) -> EngineSettings:
    unknown = set(data) - set(_ENGINE_FIELDS) - _ENGINE_EXTRA
    if unknown:
        raise ValueError(f"{where}.{sorted(unknown)[0]}: unknown engine setting")
    values: dict[str, Any] = {}
    for key, name in _ENGINE_FIELDS.items():
        if data.get(key) is not None:
            value = data[key]
            values[name] = _float(value, f"{where}.{key}") if name in _FLOAT_FIELDS else value
    engine_args = data.get("engineArgs")
    if engine_args is not None:
        values["engine_args"] = dict(_mapping(engine_args, f"{where}.engineArgs"))
    sampling_where = where.rsplit(".", 1)[0] + ".sampling"
    unknown = set(sampling) - set(_SAMPLING_FIELDS)
    if unknown:
        raise ValueError(f"{sampling_where}.{sorted(unknown)[0]}: unknown sampling setting")
    sampling_values: dict[str, Any] = {}
    for key, name in _SAMPLING_FIELDS.items():
        if sampling.get(key) is not None:
            path = f"{sampling_where}.{key}"
            value = sampling[key]
            sampling_values[name] = (
                _float(value, path)
                if name in ("temperature", "top_p")
                else (_int(value, path, minimum=1))
            )
    try:
        values["sampling"] = SamplingSettings(**sampling_values)
    except ValueError as exc:
        raise ValueError(f"{sampling_where}: {exc}") from exc
    try:
        return EngineSettings(**values)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from exc
    except TypeError as exc:
        raise ValueError(f"{where}: {exc}") from exc


def _retries(data: Mapping[str, Any]) -> RetrySpec:
    return RetrySpec(
        per_shard=_int(data.get("perShard", DEFAULT_RETRIES), "spec.retries.perShard", minimum=0),
        max_failed_shards=_int(
            data.get("maxFailedShards", 0), "spec.retries.maxFailedShards", minimum=0
        ),
    )


def _resources(value: Any, where: str, default: Resources) -> Resources:
    if value is None:
        return default
    data = _mapping(value, where)
    out: dict[str, str | None] = {}
    for key in ("cpu", "memory"):
        item = data.get(key)
        if item is None:
            out[key] = getattr(default, key)
            continue
        text = str(item)
        if not _QUANTITY.match(text):
            raise ValueError(f"{where}.{key}: not a Kubernetes quantity: {text!r}")
        out[key] = text
    return Resources(**out)


def _check_paths(job: JobSpec) -> None:
    source = job.input.uri.rstrip("/")
    target = job.output_uri.rstrip("/")
    if target == source:
        raise ValueError("spec.output.uri: must differ from spec.input.uri")
    if target.startswith(source + "/"):
        raise ValueError("spec.output.uri: must not lie inside spec.input.uri")


# --- scalar checks --------------------------------------------------------------------------


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: must be a mapping")
    return value


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: must be a non-empty string")
    return value


def _opt_str(value: Any, where: str) -> str | None:
    return None if value is None or value == "" else _str(value, where)


def _uri(value: Any, where: str) -> str:
    text = _str(value, where)
    if not (text.startswith("s3://") or text.startswith("/") or text.startswith("file://")):
        raise ValueError(f"{where}: must be an s3:// URI or a local path, got {text!r}")
    return text


def _choice(value: Any, where: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{where}: must be one of {', '.join(allowed)}, got {value!r}")
    return str(value)


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{where}: must be true or false")
    return value


def _int(value: Any, where: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where}: must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{where}: must be >= {minimum}, got {value}")
    return value


def _float(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{where}: must be a number, got {value!r}")
    return float(value)
