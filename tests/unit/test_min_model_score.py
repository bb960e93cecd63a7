"""spec.rewrite.minModelScore: SGCR answers the model itself scores below it are rejected, and
the setting decides the SGCR stage's id (and so every stage after it), not the filter's."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from palimpsest.document import job_prompts
from palimpsest.engines import Completion, GenerationResult
from palimpsest.engines.settings import EngineSettings
from palimpsest.identity import stage_refs
from palimpsest.job import InputSpec, Job, RewriteSettings, parse_job
from palimpsest.prompts import load_stage_prompt
from palimpsest.records import Fields
from palimpsest.stages.llm import LOW_MODEL_SCORE, NO_MODEL_SCORE, TOO_SHORT, RewriteStage
from palimpsest.stages.registry import STAGES
from tests.support.jobs import manifest

CODE = "def area(width: float, height: float) -> float:\n    return width * height\n"
ENGINE = EngineSettings(type="vllm", model="org/model")


def sgcr(min_score: float | None) -> RewriteStage:
    entry = STAGES["sgcr"]
    assert entry.prompt is not None
    prompt = load_stage_prompt(entry.prompt, entry.prompt_fields)
    return RewriteStage(entry, prompt, Fields(), {}, min_score)


def answer(score: str | None, code: str = CODE) -> GenerationResult:
    head = f"Score: {score}\n\n" if score is not None else ""
    text = f"{head}Suggestions:\n- names\n\nImproved code:\n```python\n{code}```\n"
    return GenerationResult("r", 20, (Completion(text, "stop", 9),))


@pytest.mark.parametrize(
    ("score", "reason"),
    [
        ("8", None),
        ("7", None),
        ("6.5", LOW_MODEL_SCORE),
        ("2", LOW_MODEL_SCORE),
        (None, NO_MODEL_SCORE),
    ],
)
def test_answers_below_the_minimum_are_rejected(score: str | None, reason: str | None) -> None:
    verdict = sgcr(7.0).judge(answer(score))
    assert verdict.reason == reason
    if reason is None:
        assert verdict.text == CODE
    else:
        assert verdict.meta["suggestions"] == "names"
    if reason == LOW_MODEL_SCORE:
        assert verdict.detail == f"score {float(score or 0):g} < 7"


def test_without_a_minimum_every_score_is_kept_and_other_rejects_keep_their_reason() -> None:
    assert sgcr(None).judge(answer("1")).reason is None
    assert sgcr(None).judge(answer(None)).reason is None
    assert sgcr(7.0).judge(answer("9", code="x = 1\n")).reason == TOO_SHORT


def job(**rewrite: Any) -> Job:
    return Job(
        name="demo",
        recipe="swallowcode",
        stages=("filter", "sgcr", "scor"),
        input=InputSpec(uri="s3://bucket/in"),
        output_uri="s3://bucket/out",
        rewrite=RewriteSettings(engine=ENGINE, **rewrite),
    )


def test_the_minimum_decides_sgcr_and_what_follows_but_not_the_filter() -> None:
    base = job()
    plain = stage_refs(base, "p", job_prompts(base))
    strict = stage_refs(job(min_model_score=7.0), "p", job_prompts(base))
    stricter = stage_refs(job(min_model_score=8.0), "p", job_prompts(base))
    assert plain[0] == strict[0] == stricter[0]
    assert len({plain[1], strict[1], stricter[1]}) == 3
    assert len({plain[2], strict[2], stricter[2]}) == 3
    assert stage_refs(replace(base), "p", job_prompts(base)) == plain


def with_min_score(value: Any) -> dict[str, Any]:
    return manifest(rewrite={"engine": {"type": "vllm", "model": "m"}, "minModelScore": value})


def test_the_spec_value_is_parsed_and_checked() -> None:
    parsed = parse_job(with_min_score(7))
    assert parsed.rewrite is not None and parsed.rewrite.min_model_score == 7.0
    with pytest.raises(ValueError, match=r"spec\.rewrite\.minModelScore: must be within 0\.\.10"):
        parse_job(with_min_score(11))
    with pytest.raises(ValueError, match=r"spec\.rewrite\.minModelScore: must be a number"):
        parse_job(with_min_score("high"))
