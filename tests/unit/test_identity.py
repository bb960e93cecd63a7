"""Stage identity: every setting that can change a stage's records changes its id; every
setting that cannot, does not; and an upstream change re-runs what follows it."""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from palimpsest.document import job_prompts
from palimpsest.engines.base import SamplingSettings
from palimpsest.engines.settings import EngineSettings, SpeculativeSettings
from palimpsest.identity import (
    ENGINE_DECIDING,
    ENGINE_NOT_DECIDING,
    VLLM_ARGS_NOT_DECIDING,
    StageRef,
    stage_refs,
)
from palimpsest.job import InputSpec, Job, RewriteSettings
from palimpsest.plan import PlanSettings
from palimpsest.prompts import Prompt, parse_prompt
from palimpsest.stages.filter import FilterSettings

ENGINE = EngineSettings(type="vllm", model="org/model", base_url="http://llm/v1")
JOB = Job(
    name="demo",
    recipe="swallowcode",
    stages=("filter", "sgcr", "scor"),
    input=InputSpec(uri="s3://bucket/in"),
    output_uri="s3://bucket/out",
    rewrite=RewriteSettings(engine=ENGINE),
)
PROMPTS = job_prompts(JOB)

CHANGED_ENGINE: dict[str, Any] = {
    "type": "openai",
    "model": "org/other",
    "revision": "abc123",
    "tokenizer": "org/tokenizer",
    "dtype": "bfloat16",
    "quantization": "fp8",
    "kv_cache_dtype": "fp8",
    "max_model_len": 4096,
    "sampling": SamplingSettings(temperature=0.7),
    "engine_args": {"seed": 3},
    "speculative": SpeculativeSettings(),
    "max_in_flight": 7,
    "tensor_parallel_size": 4,
    "gpu_memory_utilization": 0.5,
    "enable_prefix_caching": False,
    "model_cache_dir": "/cache",
    "base_url": "http://other/v1",
    "api_key_env": "KEY",
    "request_timeout": 5.0,
    "connect_timeout": 1.0,
    "max_attempts": 2,
    "backoff_initial": 0.5,
    "backoff_max": 2.0,
    "max_consecutive_failures": 3,
}


def ids(job: Job, prompts: dict[str, Prompt] | None = None, plan: str = "plan-1") -> list[str]:
    return [r.stage_id for r in stage_refs(job, plan, PROMPTS if prompts is None else prompts)]


def with_engine(**changes: Any) -> Job:
    assert JOB.rewrite is not None
    return replace(JOB, rewrite=replace(JOB.rewrite, engine=replace(ENGINE, **changes)))


def test_the_lists_cover_every_engine_setting_once() -> None:
    names = [f.name for f in dataclasses.fields(EngineSettings)]
    assert sorted(ENGINE_DECIDING + ENGINE_NOT_DECIDING) == sorted(names)
    assert not set(ENGINE_DECIDING) & set(ENGINE_NOT_DECIDING)
    assert set(CHANGED_ENGINE) == set(names)


@pytest.mark.parametrize("name", ENGINE_DECIDING)
def test_each_deciding_engine_setting_changes_the_rewrite_ids(name: str) -> None:
    before, after = ids(JOB), ids(with_engine(**{name: CHANGED_ENGINE[name]}))
    assert after[0] == before[0], "the filter does not depend on the engine"
    assert after[1] != before[1] and after[2] != before[2]


@pytest.mark.parametrize("name", ENGINE_NOT_DECIDING)
def test_each_speed_only_engine_setting_keeps_every_id(name: str) -> None:
    assert ids(with_engine(**{name: CHANGED_ENGINE[name]})) == ids(JOB)


@pytest.mark.parametrize(
    "field", [f.name for f in dataclasses.fields(SamplingSettings) if f.name != "n"]
)
def test_each_sampling_setting_decides(field: str) -> None:
    value = {"temperature": 0.9, "top_p": 0.5, "max_tokens": 100, "seed": 1}[field]
    changed = with_engine(sampling=replace(ENGINE.sampling, **{field: value}))
    assert ids(changed)[1:] != ids(JOB)[1:]


def test_n_decides_only_for_the_stage_that_samples_several_answers() -> None:
    assert ids(with_engine(sampling=replace(ENGINE.sampling, n=4))) == ids(JOB)
    instruct = Job(
        name="i",
        recipe="instruct",
        stages=("response",),
        input=InputSpec(uri="/in"),
        output_uri="/out",
        rewrite=RewriteSettings(engine=ENGINE),
    )
    prompts = job_prompts(instruct)
    sampled = replace(
        instruct,
        rewrite=RewriteSettings(engine=replace(ENGINE, sampling=SamplingSettings(n=4))),
    )
    assert ids(sampled, prompts) != ids(instruct, prompts)


def test_an_unknown_engine_argument_decides_and_a_speed_one_does_not() -> None:
    assert ids(with_engine(engine_args={"quantization_param_path": "x"})) != ids(JOB)
    for name in sorted(VLLM_ARGS_NOT_DECIDING):
        assert ids(with_engine(engine_args={name: 1})) == ids(JOB), name


def test_a_quantized_edit_reruns_the_rewrites() -> None:
    edited = with_engine(engine_args={"quantization": "fp8", "kv_cache_dtype": "fp8"})
    assert ids(edited)[1:] != ids(JOB)[1:] and ids(edited)[0] == ids(JOB)[0]


@pytest.mark.parametrize(
    ("change", "same"),
    [
        ({"min_score": 6.5}, False),
        ({"time_limit": 30.0}, False),
        ({"exact_scores": True}, False),
        ({"repetition": True}, False),
        ({"workers": 16}, True),
    ],
)
def test_filter_settings(change: dict[str, Any], same: bool) -> None:
    edited = replace(JOB, filter=replace(FilterSettings(), **change))
    assert (ids(edited) == ids(JOB)) is same
    if not same:
        assert all(a != b for a, b in zip(ids(edited), ids(JOB), strict=True)), "all downstream"


def test_record_fields_and_the_plan_decide_every_stage() -> None:
    for edited in (
        replace(JOB, input=replace(JOB.input, text_field="content")),
        replace(JOB, input=replace(JOB.input, id_field="key")),
    ):
        assert all(a != b for a, b in zip(ids(edited), ids(JOB), strict=True))
    assert all(a != b for a, b in zip(ids(JOB, plan="plan-2"), ids(JOB), strict=True))


def test_sharding_reaches_the_ids_only_through_the_plan() -> None:
    edited = replace(JOB, sharding=PlanSettings(records_per_shard=5))
    assert ids(edited) == ids(JOB)


def test_a_prompt_edit_reruns_that_stage_and_the_ones_after_it(tmp_path: Path) -> None:
    scor = PROMPTS["scor"]
    edited_text = scor.text + "\n# one more line\n"
    edited = parse_prompt(scor.path, edited_text.encode(), frozenset({"text"}))
    before, after = ids(JOB), ids(JOB, {**PROMPTS, "scor": edited})
    assert before[:2] == after[:2] and before[2] != after[2]
    sgcr = parse_prompt(
        PROMPTS["sgcr"].path, (PROMPTS["sgcr"].text + "\n").encode(), frozenset({"text"})
    )
    after_sgcr = ids(JOB, {**PROMPTS, "sgcr": sgcr})
    assert after_sgcr[0] == before[0] and after_sgcr[1:] != before[1:]
    assert after_sgcr[2] != before[2], "SCOR chains SGCR's id"


def test_ids_chain_and_name_their_kind() -> None:
    refs = stage_refs(JOB, "plan-1", PROMPTS)
    assert [r.kind for r in refs] == ["filter", "sgcr", "scor"]
    assert refs[0].previous is None and refs[1].previous == refs[0].stage_id
    assert all(isinstance(r, StageRef) and r.stage_id.startswith(r.kind + "-") for r in refs)
    assert refs[2].uri("s3://b/out/") == f"s3://b/out/{refs[2].stage_id}"


def test_language_decides_the_translate_stage() -> None:
    job = Job(
        name="i",
        recipe="instruct",
        stages=("translate", "response"),
        input=InputSpec(uri="/in"),
        output_uri="/out",
        rewrite=RewriteSettings(engine=ENGINE, language="Japanese"),
    )
    prompts = job_prompts(job)
    german = replace(job, rewrite=RewriteSettings(ENGINE, "German"))
    assert ids(job, prompts) != ids(german, prompts)


def test_the_output_format_decides_only_the_final_stage() -> None:
    parquet = ids(replace(JOB, output_format="parquet"))
    assert ids(replace(JOB, output_format="jsonl")) == ids(JOB)
    assert parquet[:2] == ids(JOB)[:2] and parquet[2] != ids(JOB)[2]
    filter_only = replace(JOB, stages=("filter",), output_format="parquet")
    assert ids(filter_only) != ids(replace(JOB, stages=("filter",)))
