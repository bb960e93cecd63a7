"""RewriteJob spec parsing: defaults, derived pipeline settings, and errors naming the field."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from palimpsest.chain import job_stages
from palimpsest.jobspec import GPU_POOL_SELECTOR, job_stage_refs, load_job_prompts, parse_job

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
    assert (job.name, job.namespace, job.recipe) == ("demo", "team", "swallowcode")
    assert job.stages == ("filter", "sgcr", "scor")
    assert job.rewrite_stages == ("sgcr", "scor")
    assert job.sharding.records_per_shard == 10_000
    assert job.filter.min_score == 7.0 and job.filter.time_limit == 60.0
    assert job.retries.per_shard == 3 and job.retries.max_failed_shards == 0
    assert job.rewrite is not None
    assert job.rewrite.node_selector == dict(GPU_POOL_SELECTOR)
    assert job.rewrite.engine.sampling.temperature == 0.2
    assert not job.suspend and not job.dry_run and job.queue_name is None


def test_derived_settings_match_the_pipeline_types() -> None:
    job = parse_job(
        manifest(
            filter={"minScore": 8, "timeLimitSeconds": 5},
            input={"uri": "s3://bucket/in", "textField": "content", "idField": "key"},
            rewrite={
                "engine": {"type": "openai", "model": "m", "baseURL": "http://llm/v1"},
                "sampling": {"temperature": 0, "topP": 1, "maxTokens": 64, "n": 2},
            },
        )
    )
    settings = job.filter_settings()
    assert isinstance(settings.min_score, float) and settings.min_score == 8.0
    assert settings.fields.text == "content" and settings.fields.id == "key"
    engine = job.engine_settings()
    assert engine is not None and engine.base_url == "http://llm/v1"
    assert engine.sampling.as_dict() == {
        "temperature": 0.0,
        "top_p": 1.0,
        "max_tokens": 64,
        "n": 2,
        "seed": None,
    }


def test_stage_refs_are_the_chain_ids() -> None:
    job = parse_job(BASE)
    prompts = load_job_prompts(job)
    refs = job_stage_refs(job, "plan-1", prompts)
    expected = job_stages(
        "plan-1",
        "swallowcode",
        ("filter", "sgcr", "scor"),
        job.filter_settings(),
        job.engine_settings(),
        prompts,
        "text",
        {},
    )
    assert refs == expected
    assert [r.kind for r in refs] == ["filter", "sgcr", "scor"]
    assert refs[1].previous == refs[0].stage_id


def test_integer_and_float_spellings_give_the_same_ids() -> None:
    as_int = parse_job(manifest(filter={"minScore": 7}))
    as_float = parse_job(manifest(filter={"minScore": 7.0}))
    prompts = load_job_prompts(as_int)
    assert job_stage_refs(as_int, "p", prompts) == job_stage_refs(as_float, "p", prompts)


def test_filter_only_job_needs_no_rewrite_section() -> None:
    job = parse_job(manifest(stages=["filter"], rewrite=None))
    assert job.rewrite is None and job.stages == ("filter",)
    assert [r.kind for r in job_stage_refs(job, "p", {})] == ["filter"]


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"recipe": "poetry"}, "spec.recipe"),
        ({"stages": ["scor", "sgcr"]}, "spec.stages"),
        ({"stages": ["math"]}, "spec.stages"),
        ({"stages": []}, "spec.stages"),
        ({"input": {"uri": "http://x"}}, "spec.input.uri"),
        ({"input": {"uri": "s3://bucket/in", "format": "csv"}}, "spec.input.format"),
        ({"output": {"uri": "s3://bucket/in/"}}, "spec.output.uri"),
        ({"output": {"uri": "s3://bucket/in/sub"}}, "spec.output.uri"),
        ({"sharding": {"recordsPerShard": 0}}, "spec.sharding.recordsPerShard"),
        ({"filter": {"minScore": 11}}, "spec.filter.minScore"),
        ({"filter": {"minScore": "high"}}, "spec.filter.minScore"),
        ({"filter": {"timeLimitSeconds": 0}}, "spec.filter.timeLimitSeconds"),
        ({"filter": {"parallelism": 0}}, "spec.filter.parallelism"),
        ({"filter": {"resources": {"cpu": "lots"}}}, "spec.filter.resources.cpu"),
        ({"rewrite": None}, "spec.rewrite"),
        ({"rewrite": {"engine": {"type": "tgi", "model": "m"}}}, "spec.rewrite.engine"),
        ({"rewrite": {"engine": {"type": "openai", "model": "m"}}}, "spec.rewrite.engine"),
        (
            {"rewrite": {"engine": {"type": "vllm", "model": "m", "colour": 1}}},
            "spec.rewrite.engine.colour",
        ),
        (
            {"rewrite": {"engine": {"type": "vllm", "model": "m"}, "sampling": {"topP": 0}}},
            "spec.rewrite.sampling: sampling.top_p",
        ),
        (
            {"rewrite": {"engine": {"type": "vllm", "model": "m"}, "sampling": {"maxTokens": 0}}},
            "spec.rewrite.sampling.maxTokens",
        ),
        (
            {"rewrite": {"engine": {"type": "vllm", "model": "m"}, "shardsPerPod": 0}},
            "spec.rewrite.shardsPerPod",
        ),
        ({"retries": {"perShard": -1}}, "spec.retries.perShard"),
        ({"suspend": "yes"}, "spec.suspend"),
        ({"dryRun": 1}, "spec.dryRun"),
    ],
)
def test_bad_values_name_their_field(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(field)):
        parse_job(manifest(**spec))


def test_missing_spec_is_named() -> None:
    with pytest.raises(ValueError, match=r"^spec: must be a mapping"):
        parse_job({"metadata": {"name": "x"}})
