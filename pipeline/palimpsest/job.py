"""The portable job: what a RewriteJob asks for, parsed once into frozen dataclasses.

A `Job` holds everything that decides what the pipeline does with the data - recipe and
stages, input and output, sharding, filter settings, engine and sampling - and nothing about
where pods run. The operator (from the custom resource), `palimpsest run` (from a YAML file)
and the `palimpsest filter` / `palimpsest rewrite` commands (from their flags) all build a
`Job`; its checks run in `Job.__post_init__`, so every path rejects the same mistakes with the
same message, naming the field as the manifest spells it (e.g. `spec.filter.minScore`).

Kubernetes placement (images, resources, node selectors, tolerations, volumes, Secrets,
queue, retries) is parsed by the operator (`palimpsest_operator.placement`); the spec keys
it owns are listed in `CLUSTER_KEYS`, so that the parser here can still reject a key nobody
reads (a typo) instead of ignoring it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from palimpsest.commit import OUTPUT_FORMATS
from palimpsest.dedupsteps import DedupSettings
from palimpsest.engines.base import SamplingSettings
from palimpsest.engines.settings import EngineSettings, SpeculativeSettings
from palimpsest.names import API_VERSION, KIND
from palimpsest.plan import INPUT_FORMATS, PlanSettings
from palimpsest.records import Fields
from palimpsest.spec import (
    boolean,
    choice,
    integer,
    known,
    mapping,
    number,
    opt_string,
    string,
    uri,
)
from palimpsest.stages.decontam import DecontamSettings
from palimpsest.stages.filter import FilterSettings
from palimpsest.stages.registry import STAGES, Runner, recipe_stages
from palimpsest.storage import S3Settings

DEFAULT_RECORDS_PER_SHARD: Final = 10_000

CLUSTER_KEYS: Final[Mapping[str, frozenset[str]]] = {
    "spec": frozenset({"retries", "queueName", "suspend"}),
    "spec.storage": frozenset({"secretRef"}),
    "spec.filter": frozenset(
        {
            "image",
            "resources",
            "parallelism",
            "podTemplate",
            "activeDeadlineSeconds",
            "nodeSelector",
            "tolerations",
        }
    ),
    "spec.rewrite": frozenset(
        {
            "image",
            "prompts",
            "shardsPerPod",
            "parallelism",
            "resources",
            "nodeSelector",
            "tolerations",
            "priorityClassName",
            "podTemplate",
            "activeDeadlineSeconds",
        }
    ),
    "spec.rewrite.engine": frozenset(
        {"modelVolume", "apiKeySecretRef", "hubTokenSecretRef", "modelCacheSize"}
    ),
}
"""Spec keys that place pods on a cluster; the operator parses them, local runs ignore them."""

JOB_KEYS: Final[Mapping[str, frozenset[str]]] = {
    "spec": frozenset(
        {"recipe", "stages", "input", "output", "storage", "sharding", "filter", "rewrite"}
        | {"dryRun", "decontam", "card"}
        | {"dedup"}
    ),
    "spec.input": frozenset({"uri", "format", "textField", "idField"}),
    "spec.output": frozenset({"uri", "format"}),
    "spec.storage": frozenset({"endpoint", "region"}),
    "spec.sharding": frozenset({"recordsPerShard"}),
    "spec.filter": frozenset({"minScore", "timeLimitSeconds", "workers", "exactScores"})
    | {"repetition", "memoryLimitMiB", "maxRecordBytes"},
    "spec.rewrite": frozenset({"engine", "sampling", "language", "minModelScore"}),
    "spec.card": frozenset({"license", "language", "tokenizer"}),
    "spec.decontam": frozenset(
        {"benchmarks", "textFields", "idField", "minMatchTokens", "threshold"}
    ),
    "spec.dedup": frozenset({"threshold", "exact", "near", "columnRanges"}),
}
"""Spec keys this parser reads, per section (engine and sampling keys: ENGINE_KEYS and
SAMPLING_KEYS)."""


@dataclass(frozen=True)
class InputSpec:
    """The corpus: where it is and which record fields hold the text and the id."""

    uri: str
    text_field: str = "text"
    id_field: str = "id"

    @property
    def fields(self) -> Fields:
        return Fields(text=self.text_field, id=self.id_field)


@dataclass(frozen=True)
class StorageSpec:
    """How S3 is reached (credentials come the standard AWS way, or from a Secret)."""

    endpoint: str | None = None
    region: str | None = None

    def s3_settings(self) -> S3Settings:
        return S3Settings(endpoint_url=self.endpoint, region=self.region)


@dataclass(frozen=True)
class RewriteSettings:
    """The LLM stages' engine and sampling, and the values their prompts take."""

    engine: EngineSettings
    language: str | None = None
    """Target language of the translate stage (spec.rewrite.language)."""
    min_model_score: float | None = None
    """SGCR answers whose own evaluation score (0-10) is below this are rejected as
    `low_model_score`, or `no_model_score` without one (spec.rewrite.minModelScore)."""

    def __post_init__(self) -> None:
        if self.min_model_score is not None and not 0.0 <= self.min_model_score <= 10.0:
            raise ValueError(
                f"spec.rewrite.minModelScore: must be within 0..10, got {self.min_model_score}"
            )


@dataclass(frozen=True)
class CardSettings:
    """`spec.card`: what the dataset card (`palimpsest.card`) says that the stages do not
    decide; changing it re-runs nothing."""

    license: str | None = None
    """The data's license as a Hugging Face license id (e.g. apache-2.0); unset: not stated."""
    language: tuple[str, ...] = ()
    """Languages of the data as ISO 639-1 codes (e.g. en, ja)."""
    tokenizer: str | None = None
    """Tokenizer of the card's token counts (a local folder, or a hub name in the local
    cache); unset: the rewrite model's."""


@dataclass(frozen=True)
class Job:
    """One job, whatever it came from. Invalid combinations raise ValueError naming the field."""

    name: str
    recipe: str
    stages: tuple[str, ...]
    input: InputSpec
    output_uri: str
    storage: StorageSpec = field(default_factory=StorageSpec)
    sharding: PlanSettings = field(
        default_factory=lambda: PlanSettings(records_per_shard=DEFAULT_RECORDS_PER_SHARD)
    )
    filter: FilterSettings = field(default_factory=FilterSettings)
    rewrite: RewriteSettings | None = None
    dry_run: bool = False
    decontam: DecontamSettings = field(default_factory=DecontamSettings)
    card: CardSettings = field(default_factory=CardSettings)
    dedup: DedupSettings = field(default_factory=DedupSettings)
    output_format: str = "jsonl"
    """`spec.output.format`: the final stage's part format, one of OUTPUT_FORMATS."""

    def __post_init__(self) -> None:
        recipe_stages(self.recipe, self.stages, "spec.stages")
        if self.llm_stages and self.rewrite is None:
            raise ValueError(f"spec.rewrite.engine: required by stage {self.llm_stages[0]}")
        for name in self.stages:
            for placeholder, setting in STAGES[name].prompt_values.items():
                if setting.get(self) in (None, ""):
                    raise ValueError(
                        f"{setting.path}: required by stage {name} (its prompt's {{{{"
                        f"{placeholder}}}}})"
                    )
        _check_paths(self.input.uri, self.output_uri)

    @property
    def llm_stages(self) -> tuple[str, ...]:
        return tuple(s for s in self.stages if STAGES[s].runner is Runner.LLM)

    @property
    def engine(self) -> EngineSettings:
        if self.rewrite is None:
            raise ValueError("spec.rewrite.engine: this job has no rewrite stage")
        return self.rewrite.engine


def parse_job(manifest: Mapping[str, Any]) -> Job:
    """A whole RewriteJob manifest (as applied or as read from YAML) as a `Job`."""
    if manifest.get("apiVersion") != API_VERSION or manifest.get("kind") != KIND:
        raise ValueError(f"apiVersion/kind: expected {API_VERSION} {KIND}")
    metadata = mapping(manifest.get("metadata") or {}, "metadata")
    spec = mapping(manifest.get("spec"), "spec")
    _known(spec, "spec")
    recipe = string(spec.get("recipe"), "spec.recipe")
    stages = recipe_stages(recipe, _stage_list(spec.get("stages")), "spec.stages")
    input_data = mapping(spec.get("input"), "spec.input")
    output = mapping(spec.get("output"), "spec.output")
    _known(output, "spec.output")
    rewrite_data = spec.get("rewrite")
    rewrite = None
    if rewrite_data is not None:
        rewrite = _rewrite(mapping(rewrite_data, "spec.rewrite"))
    return Job(
        name=string(metadata.get("name"), "metadata.name"),
        recipe=recipe,
        stages=stages,
        input=_input(input_data),
        output_uri=uri(output.get("uri"), "spec.output.uri"),
        storage=_storage(mapping(spec.get("storage") or {}, "spec.storage")),
        sharding=_sharding(
            mapping(spec.get("sharding") or {}, "spec.sharding"),
            choice(input_data.get("format", "auto"), "spec.input.format", INPUT_FORMATS),
        ),
        filter=_filter(mapping(spec.get("filter") or {}, "spec.filter")),
        rewrite=rewrite,
        dry_run=boolean(spec.get("dryRun", False), "spec.dryRun"),
        decontam=_decontam(mapping(spec.get("decontam") or {}, "spec.decontam")),
        card=_card(mapping(spec.get("card") or {}, "spec.card")),
        dedup=_dedup(mapping(spec.get("dedup") or {}, "spec.dedup")),
        output_format=choice(
            output.get("format", "jsonl"), "spec.output.format", tuple(OUTPUT_FORMATS)
        ),
    )


# --- sections -----------------------------------------------------------------------------


def _stage_list(value: Any) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise ValueError("spec.stages: must be a list of stage names")
    return [string(s, "spec.stages[]") for s in value]


def _input(data: Mapping[str, Any]) -> InputSpec:
    _known(data, "spec.input")
    return InputSpec(
        uri=uri(data.get("uri"), "spec.input.uri"),
        text_field=string(data.get("textField", "text"), "spec.input.textField"),
        id_field=string(data.get("idField", "id"), "spec.input.idField"),
    )


def _storage(data: Mapping[str, Any]) -> StorageSpec:
    _known(data, "spec.storage")
    return StorageSpec(
        endpoint=opt_string(data.get("endpoint"), "spec.storage.endpoint"),
        region=opt_string(data.get("region"), "spec.storage.region"),
    )


def _sharding(data: Mapping[str, Any], input_format: str) -> PlanSettings:
    _known(data, "spec.sharding")
    records = integer(
        data.get("recordsPerShard", DEFAULT_RECORDS_PER_SHARD),
        "spec.sharding.recordsPerShard",
        minimum=1,
    )
    return PlanSettings(records_per_shard=records, format=input_format)


def _filter(data: Mapping[str, Any]) -> FilterSettings:
    _known(data, "spec.filter")
    defaults = FilterSettings()
    workers = data.get("workers")
    return FilterSettings(
        min_score=number(data.get("minScore", defaults.min_score), "spec.filter.minScore"),
        time_limit=number(
            data.get("timeLimitSeconds", defaults.time_limit), "spec.filter.timeLimitSeconds"
        ),
        exact_scores=boolean(data.get("exactScores", False), "spec.filter.exactScores"),
        repetition=boolean(data.get("repetition", False), "spec.filter.repetition"),
        workers=None if workers is None else integer(workers, "spec.filter.workers", minimum=1),
        memory_limit_mb=integer(
            data.get("memoryLimitMiB", defaults.memory_limit_mb),
            "spec.filter.memoryLimitMiB",
            minimum=1,
        ),
        max_record_bytes=integer(
            data.get("maxRecordBytes", defaults.max_record_bytes),
            "spec.filter.maxRecordBytes",
            minimum=1,
        ),
    )


def _decontam(data: Mapping[str, Any]) -> DecontamSettings:
    _known(data, "spec.decontam")
    defaults = DecontamSettings()
    return DecontamSettings(
        benchmarks=_strings(
            data.get("benchmarks"), "spec.decontam.benchmarks", defaults.benchmarks
        ),
        text_fields=_strings(
            data.get("textFields"), "spec.decontam.textFields", defaults.text_fields
        ),
        id_field=string(data.get("idField", defaults.id_field), "spec.decontam.idField"),
        min_match_tokens=integer(
            data.get("minMatchTokens", defaults.min_match_tokens),
            "spec.decontam.minMatchTokens",
            minimum=1,
        ),
        threshold=number(data.get("threshold", defaults.threshold), "spec.decontam.threshold"),
    )


def _dedup(data: Mapping[str, Any]) -> DedupSettings:
    _known(data, "spec.dedup")
    defaults = DedupSettings()
    threshold = number(data.get("threshold", defaults.threshold), "spec.dedup.threshold")
    exact = boolean(data.get("exact", defaults.exact), "spec.dedup.exact")
    near = boolean(data.get("near", defaults.near), "spec.dedup.near")
    ranges = integer(
        data.get("columnRanges", defaults.column_ranges), "spec.dedup.columnRanges", minimum=1
    )
    try:
        return DedupSettings(threshold=threshold, exact=exact, near=near, column_ranges=ranges)
    except ValueError as exc:
        raise ValueError(f"spec.dedup.{exc}") from exc


def _card(data: Mapping[str, Any]) -> CardSettings:
    _known(data, "spec.card")
    return CardSettings(
        license=opt_string(data.get("license"), "spec.card.license"),
        language=_strings(data.get("language"), "spec.card.language", ()),
        tokenizer=opt_string(data.get("tokenizer"), "spec.card.tokenizer"),
    )


def _strings(value: Any, where: str, default: tuple[str, ...]) -> tuple[str, ...]:
    if value is None:
        return default
    if not isinstance(value, list):
        raise ValueError(f"{where}: must be a list of strings")
    return tuple(string(v, f"{where}[{i}]") for i, v in enumerate(value))


def _rewrite(data: Mapping[str, Any]) -> RewriteSettings:
    _known(data, "spec.rewrite")
    return RewriteSettings(
        engine=_engine(
            mapping(data.get("engine"), "spec.rewrite.engine"),
            mapping(data.get("sampling") or {}, "spec.rewrite.sampling"),
        ),
        language=opt_string(data.get("language"), "spec.rewrite.language"),
        min_model_score=None
        if data.get("minModelScore") is None
        else number(data["minModelScore"], "spec.rewrite.minModelScore"),
    )


ENGINE_KEYS: Final[Mapping[str, str]] = {
    "type": "type",
    "model": "model",
    "revision": "revision",
    "tokenizer": "tokenizer",
    "quantization": "quantization",
    "kvCacheDtype": "kv_cache_dtype",
    "baseURL": "base_url",
    "tensorParallelSize": "tensor_parallel_size",
    "maxModelLen": "max_model_len",
    "gpuMemoryUtilization": "gpu_memory_utilization",
    "dtype": "dtype",
    "maxInFlight": "max_in_flight",
    "engineArgs": "engine_args",
    "speculative": "speculative",
}
"""spec.rewrite.engine keys and the EngineSettings fields they set."""

SPECULATIVE_KEYS: Final[Mapping[str, str]] = {
    "method": "method",
    "numSpeculativeTokens": "num_speculative_tokens",
    "promptLookupMax": "prompt_lookup_max",
    "promptLookupMin": "prompt_lookup_min",
}
"""spec.rewrite.engine.speculative keys and the SpeculativeSettings fields they set."""

SAMPLING_KEYS: Final[Mapping[str, str]] = {
    "temperature": "temperature",
    "topP": "top_p",
    "maxTokens": "max_tokens",
    "n": "n",
    "seed": "seed",
}
"""spec.rewrite.sampling keys and the SamplingSettings fields they set."""

_FLOATS: Final = frozenset({"gpu_memory_utilization", "temperature", "top_p"})
_INTS: Final = frozenset(
    {"tensor_parallel_size", "max_model_len", "max_in_flight", "max_tokens", "n", "seed"}
    | {"num_speculative_tokens", "prompt_lookup_max", "prompt_lookup_min"}
)
_MAPPINGS: Final = frozenset({"engine_args", "speculative"})


def _engine(data: Mapping[str, Any], sampling: Mapping[str, Any]) -> EngineSettings:
    where = "spec.rewrite.engine"
    _known(data, where, frozenset(ENGINE_KEYS))
    for required in ("type", "model"):
        string(data.get(required), f"{where}.{required}")
    values = _settings(data, ENGINE_KEYS, where)
    if "engine_args" in values:
        values["engine_args"] = dict(mapping(values["engine_args"], f"{where}.engineArgs"))
    if "speculative" in values:
        values["speculative"] = _speculative(values["speculative"], f"{where}.speculative")
    _known(sampling, "spec.rewrite.sampling", frozenset(SAMPLING_KEYS))
    try:
        values["sampling"] = SamplingSettings(
            **_settings(sampling, SAMPLING_KEYS, "spec.rewrite.sampling")
        )
    except ValueError as exc:
        raise _respelled(exc, "spec.rewrite.sampling", SAMPLING_KEYS) from exc
    try:
        return EngineSettings(**values)
    except ValueError as exc:
        raise _respelled(exc, where, ENGINE_KEYS) from exc


def _speculative(value: Any, where: str) -> SpeculativeSettings:
    data = mapping(value, where)
    _known(data, where, frozenset(SPECULATIVE_KEYS))
    try:
        return SpeculativeSettings(**_settings(data, SPECULATIVE_KEYS, where))
    except ValueError as exc:
        raise _respelled(exc, where, SPECULATIVE_KEYS) from exc


def _respelled(exc: ValueError, where: str, keys: Mapping[str, str]) -> ValueError:
    """A settings error ("top_p: must be ...") as the spec spells the field."""
    name, _, message = str(exc).partition(": ")
    name = name.rsplit(".", 1)[-1]
    spelled = {field: key for key, field in keys.items()}.get(name, name)
    return ValueError(f"{where}.{spelled}: {message}")


def _settings(data: Mapping[str, Any], keys: Mapping[str, str], where: str) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, name in keys.items():
        value = data.get(key)
        if value is None:
            continue
        path = f"{where}.{key}"
        if name in _FLOATS:
            value = number(value, path)
        elif name in _INTS:
            value = integer(value, path, minimum=0 if name == "seed" else 1)
        elif name not in _MAPPINGS:
            value = string(value, path)
        values[name] = value
    return values


def _check_paths(source_uri: str, target_uri: str) -> None:
    source = source_uri.rstrip("/")
    target = target_uri.rstrip("/")
    if target == source:
        raise ValueError("spec.output.uri: must differ from spec.input.uri")
    if target.startswith(source + "/"):
        raise ValueError("spec.output.uri: must not lie inside spec.input.uri")


def _known(data: Mapping[str, Any], where: str, keys: frozenset[str] | None = None) -> None:
    """Reject a key neither this parser nor the operator reads (usually a typo)."""
    known(data, where, (keys or JOB_KEYS[where]) | CLUSTER_KEYS.get(where, frozenset()))
