"""RewriteJob parsing: defaults, the portable job and its placement, errors naming the field."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from palimpsest.cli import build_parser
from palimpsest.commands.rewrite import rewrite_job
from palimpsest.document import job_prompts
from palimpsest.engines.settings import SpeculativeSettings
from palimpsest.identity import stage_refs
from palimpsest.job import Job, parse_job
from palimpsest.stages.registry import RECIPES
from palimpsest_operator.placement import GPU_POOL_SELECTOR, parse_placement

BASE: dict[str, Any] = {
    "apiVersion": "palimpsest.dev/v1alpha1",
    "kind": "RewriteJob",
    "metadata": {"name": "demo", "namespace": "team"},
    "spec": {
        "recipe": "swallowcode",
        "input": {"uri": "s3://bucket/in/"},
        "output": {"uri": "s3://bucket/out"},
        "rewrite": {"engine": {"type": "vllm", "model": "org/model"}},
    },
}


def manifest(**spec: Any) -> dict[str, Any]:
    body = copy.deepcopy(BASE)
    for key, value in spec.items():
        if value is None:
            body["spec"].pop(key, None)
        else:
            body["spec"][key] = value
    return body


def test_defaults() -> None:
    job = parse_job(BASE)
    assert (job.name, job.recipe) == ("demo", "swallowcode")
    assert job.stages == ("filter", "sgcr", "scor")
    assert job.llm_stages == ("sgcr", "scor")
    assert job.sharding.records_per_shard == 10_000 and job.sharding.format == "auto"
    assert job.filter.min_score == 7.0 and job.filter.time_limit == 60.0
    assert job.engine.sampling.temperature == 0.2 and not job.dry_run
    placement = parse_placement(BASE)
    assert placement.retries.per_shard == 3 and placement.retries.max_failed_shards == 0
    assert placement.gpu.node_selector == dict(GPU_POOL_SELECTOR)
    assert not placement.suspend and placement.queue_name is None


def test_settings_have_the_pipeline_types() -> None:
    job = parse_job(
        manifest(
            filter={
                "minScore": 8,
                "timeLimitSeconds": 5,
                "exactScores": True,
                "memoryLimitMiB": 512,
                "maxRecordBytes": 1000,
            },
            input={"uri": "s3://bucket/in", "textField": "content", "idField": "key"},
            rewrite={
                "engine": {"type": "openai", "model": "m", "baseURL": "http://llm/v1"},
                "sampling": {"temperature": 0, "topP": 1, "maxTokens": 64, "n": 2, "seed": 7},
            },
        )
    )
    assert isinstance(job.filter.min_score, float) and job.filter.min_score == 8.0
    assert job.filter.exact_scores
    assert job.filter.memory_limit == 512 * 1024 * 1024
    assert job.filter.max_record_bytes == 1000
    assert job.input.fields.text == "content" and job.input.fields.id == "key"
    assert job.engine.base_url == "http://llm/v1"
    assert job.engine.sampling.as_dict() == {
        "temperature": 0.0,
        "top_p": 1.0,
        "max_tokens": 64,
        "n": 2,
        "seed": 7,
    }


def speculative(value: Any, engine_type: str = "vllm") -> dict[str, Any]:
    engine = {"type": engine_type, "model": "m", "baseURL": "http://llm/v1", "speculative": value}
    return {"rewrite": {"engine": engine}}


BAD_SPECULATIVE: list[tuple[Any, str]] = [
    ("ngram", "spec.rewrite.engine.speculative"),
    ({"method": "eagle"}, "spec.rewrite.engine.speculative.method"),
    ({"numSpeculativeTokens": 0}, "spec.rewrite.engine.speculative.numSpeculativeTokens"),
    ({"numSpeculativeTokens": "4"}, "spec.rewrite.engine.speculative.numSpeculativeTokens"),
    (
        {"promptLookupMin": 3, "promptLookupMax": 2},
        "spec.rewrite.engine.speculative.promptLookupMax",
    ),
    ({"lookahead": 2}, "spec.rewrite.engine.speculative.lookahead"),
]


def test_speculative_decoding_is_parsed_with_its_defaults() -> None:
    assert parse_job(BASE).engine.speculative is None
    job = parse_job(manifest(**speculative({"numSpeculativeTokens": 6, "promptLookupMax": 5})))
    assert job.engine.speculative == SpeculativeSettings(
        method="ngram", num_speculative_tokens=6, prompt_lookup_max=5, prompt_lookup_min=1
    )
    assert parse_job(manifest(**speculative({}))).engine.speculative == SpeculativeSettings()


def test_speculative_decoding_is_the_same_from_the_cli_and_the_resource() -> None:
    cli = ["rewrite", "/data/in", "/data/out.jsonl", "--recipe", "swallowcode", "--model", "m"]
    args = build_parser().parse_args([*cli, "--speculative", "ngram", "--prompt-lookup-max", "3"])
    resource = parse_job(manifest(**speculative({"promptLookupMax": 3})))
    assert rewrite_job(args, "/data/out").engine.speculative == resource.engine.speculative
    assert rewrite_job(build_parser().parse_args(cli), "/data/out").engine.speculative is None


def test_speculative_decoding_is_refused_for_a_server() -> None:
    with pytest.raises(
        ValueError, match=r"^spec\.rewrite\.engine\.speculative: applies to the vllm"
    ):
        parse_job(manifest(**speculative({}, engine_type="openai")))


def test_input_format_decides_the_plan_settings() -> None:
    job = parse_job(manifest(input={"uri": "s3://bucket/in", "format": "jsonl"}))
    assert job.sharding.format == "jsonl"


def test_integer_and_float_spellings_give_the_same_ids() -> None:
    as_int = parse_job(manifest(filter={"minScore": 7}))
    as_float = parse_job(manifest(filter={"minScore": 7.0}))
    prompts = job_prompts(as_int)
    assert stage_refs(as_int, "p", prompts) == stage_refs(as_float, "p", prompts)


def test_filter_only_job_needs_no_rewrite_section() -> None:
    job = parse_job(manifest(stages=["filter"], rewrite=None))
    assert job.rewrite is None and job.stages == ("filter",)
    assert [r.kind for r in stage_refs(job, "p", {})] == ["filter"]


def test_instruct_defaults_are_the_same_in_the_cli_the_resource_and_local_mode() -> None:
    spec = manifest(recipe="instruct", input={"uri": "/data/in"}, output={"uri": "/data/out"})
    from_resource = parse_job(spec)
    args = build_parser().parse_args(
        ["rewrite", "/data/in", "/data/out.jsonl", "--recipe", "instruct", "--model", "org/model"]
    )
    from_cli = rewrite_job(args, "/data/out")
    assert from_resource.stages == from_cli.stages == RECIPES["instruct"].default == ("response",)


def test_translate_needs_a_language_whichever_way_the_job_is_built() -> None:
    spec = manifest(
        recipe="instruct",
        stages=["translate", "response"],
        input={"uri": "/data/in"},
        output={"uri": "/data/out"},
    )
    with pytest.raises(ValueError, match=r"^spec\.rewrite\.language: required by stage translate"):
        parse_job(spec)
    cli = ["rewrite", "/data/in", "/data/o.jsonl", "--recipe", "instruct", "--model", "m"]
    args = build_parser().parse_args([*cli, "--stages", "translate,response"])
    with pytest.raises(ValueError, match=r"^spec\.rewrite\.language: required by stage translate"):
        rewrite_job(args, "/data/out")
    spec["spec"]["rewrite"]["language"] = "Japanese"
    assert parse_job(spec).rewrite is not None


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"recipe": "poetry"}, "spec.recipe"),
        ({"stages": ["scor", "sgcr"]}, "spec.stages"),
        ({"stages": ["math"]}, "spec.stages"),
        ({"stages": []}, "spec.stages"),
        ({"stages": "filter"}, "spec.stages"),
        ({"input": {"uri": "http://x"}}, "spec.input.uri"),
        ({"input": {"uri": "s3://bucket/in", "format": "csv"}}, "spec.input.format"),
        ({"input": {"uri": "s3://bucket/in", "txtField": "t"}}, "spec.input.txtField"),
        ({"output": {"uri": "s3://bucket/in/"}}, "spec.output.uri"),
        ({"output": {"uri": "s3://bucket/in/sub"}}, "spec.output.uri"),
        ({"sharding": {"recordsPerShard": 0}}, "spec.sharding.recordsPerShard"),
        ({"filter": {"minScore": 11}}, "spec.filter.minScore"),
        ({"filter": {"minScore": "high"}}, "spec.filter.minScore"),
        ({"filter": {"minScor": 7}}, "spec.filter.minScor"),
        ({"filter": {"timeLimitSeconds": 0}}, "spec.filter.timeLimitSeconds"),
        ({"filter": {"memoryLimitMiB": 0}}, "spec.filter.memoryLimitMiB"),
        ({"filter": {"maxRecordBytes": "big"}}, "spec.filter.maxRecordBytes"),
        ({"rewrite": None}, "spec.rewrite.engine"),
        ({"rewrite": {"engine": {"type": "tgi", "model": "m"}}}, "spec.rewrite.engine.type"),
        ({"rewrite": {"engine": {"type": "openai", "model": "m"}}}, "spec.rewrite.engine.baseURL"),
        (
            {"rewrite": {"engine": {"type": "vllm", "model": "m", "colour": 1}}},
            "spec.rewrite.engine.colour",
        ),
        (
            {"rewrite": {"engine": {"type": "vllm", "model": "m", "maxModelLen": 1}}},
            "spec.rewrite.engine.maxModelLen",
        ),
        (
            {"rewrite": {"engine": {"type": "vllm", "model": "m"}, "sampling": {"topP": 0}}},
            "spec.rewrite.sampling.topP",
        ),
        (
            {"rewrite": {"engine": {"type": "vllm", "model": "m"}, "sampling": {"maxTokens": 0}}},
            "spec.rewrite.sampling.maxTokens",
        ),
        ({"dryRun": 1}, "spec.dryRun"),
        ({"output": {"uri": "s3://b/out", "format": "csv"}}, "spec.output.format"),
        ({"colour": "blue"}, "spec.colour"),
        *[(speculative(value), field) for value, field in BAD_SPECULATIVE],
    ],
)
def test_bad_values_name_their_field(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(field)):
        parse_job(manifest(**spec))


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"filter": {"parallelism": 0}}, "spec.filter.parallelism"),
        ({"filter": {"resources": {"cpu": "lots"}}}, "spec.filter.resources.cpu"),
        (
            {"rewrite": {"engine": {"type": "vllm", "model": "m"}, "shardsPerPod": 0}},
            "spec.rewrite.shardsPerPod",
        ),
        (
            {"rewrite": {"engine": {"type": "vllm", "model": "m"}, "tolerations": {"a": 1}}},
            "spec.rewrite.tolerations",
        ),
        ({"retries": {"perShard": -1}}, "spec.retries.perShard"),
        ({"suspend": "yes"}, "spec.suspend"),
        ({"storage": {"secretRef": {}}}, "spec.storage.secretRef.name"),
    ],
)
def test_bad_placement_values_name_their_field(spec: dict[str, Any], field: str) -> None:
    body = manifest(**spec)
    parse_job(body)  # placement keys are known to the job parser, which leaves them alone
    with pytest.raises(ValueError, match="^" + re.escape(field)):
        parse_placement(body)


def test_missing_spec_is_named() -> None:
    with pytest.raises(ValueError, match=r"^spec: must be a mapping"):
        parse_job({"apiVersion": BASE["apiVersion"], "kind": "RewriteJob", "metadata": {}})


def test_other_kinds_are_refused() -> None:
    with pytest.raises(ValueError, match=r"^apiVersion/kind"):
        parse_job({**BASE, "kind": "Job"})


def test_a_job_built_in_code_is_checked_like_a_parsed_one() -> None:
    with pytest.raises(ValueError, match=r"^spec\.output\.uri: must differ"):
        Job(
            name="x",
            recipe="swallowcode",
            stages=("filter",),
            input=parse_job(BASE).input,
            output_uri="s3://bucket/in/",
        )
