"""Parsing and judging of the rewrite stages' answers, without an engine."""

from __future__ import annotations

import pytest

from palimpsest import recordfields
from palimpsest.engines import (
    PROMPT_TOO_LONG,
    ChatMessage,
    Completion,
    GenerationResult,
)
from palimpsest.prompts import load_stage_prompt
from palimpsest.recordfields import REASON_FIELD
from palimpsest.records import Fields, RawRecord
from palimpsest.stages import code, llm
from palimpsest.stages.llm import RewriteStage
from palimpsest.stages.registry import STAGES

CODE = "def area(width: float, height: float) -> float:\n    return width * height\n"


def answer(text: str, finish: str = "stop", tokens: int = 9) -> GenerationResult:
    return GenerationResult("r", 20, (Completion(text, finish, tokens),))


def sgcr_answer(code: str = CODE, score: str = "7") -> str:
    return (
        f"Score: {score}\n\nSuggestions:\n- add docstrings\n- use clearer names\n\n"
        f"Improved code:\n```python\n{code}```\n"
    )


def stage(kind: str, language: str | None = None) -> RewriteStage:
    entry = STAGES[kind]
    assert entry.prompt is not None
    prompt = load_stage_prompt(entry.prompt, entry.prompt_fields)
    return RewriteStage(entry, prompt, Fields(), {"language": language} if language else {})


def test_parse_sgcr_sections() -> None:
    parsed = code.parse_sgcr(sgcr_answer(score="**8**/10"))
    assert parsed.score == 8
    assert "add docstrings" in parsed.suggestions
    assert "Improved code" not in parsed.suggestions
    assert parsed.code == CODE


def test_sgcr_takes_the_last_python_block() -> None:
    text = "Score: 5\nSuggestions:\n```python\nx=1\n```\nImproved code:\n```python\n" + CODE + "```"
    assert code.parse_sgcr(text).code == CODE


def test_sgcr_score_missing_or_out_of_range() -> None:
    assert code.parse_sgcr("no score here\n```python\nx = 1\n```").score is None
    assert code.parse_sgcr("Score: 42\n").score is None


def test_first_fenced_block_any_language() -> None:
    text = "Here:\n```\nfirst = 1\n```\nand\n```python\nsecond = 2\n```"
    assert code.first_fenced_block(text) == "first = 1\n"
    assert code.first_fenced_block("no fence") is None
    assert code.first_fenced_block("```python\nunclosed = 1\n") is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("Score: 7\nSuggestions: none", code.NO_CODE_BLOCK),
        (sgcr_answer("x = 1\n"), llm.TOO_SHORT),
        (
            sgcr_answer("def broken(:\n    return 'this line is long enough to pass'\n"),
            code.REWRITE_SYNTAX,
        ),
        (sgcr_answer("x = 1  # " + "abcdefghij" * 11 * 10 + "\n"), llm.REPETITION),
    ],
)
def test_sgcr_rejects(text: str, reason: str) -> None:
    verdict = stage("sgcr").judge(answer(text))
    assert verdict.reason == reason


def test_sgcr_keeps_code_and_score() -> None:
    verdict = stage("sgcr").judge(answer(sgcr_answer()))
    assert verdict.reason is None
    assert verdict.text == CODE
    assert verdict.meta["score"] == 7


def test_truncated_and_engine_errors() -> None:
    sgcr = stage("sgcr")
    assert sgcr.judge(answer(sgcr_answer(), finish="length")).reason == llm.TRUNCATED
    failed = GenerationResult.failed("r", PROMPT_TOO_LONG)
    assert sgcr.judge(failed).reason == PROMPT_TOO_LONG


def test_scor_first_block_must_compile() -> None:
    scor = stage("scor")
    assert scor.judge(answer(f"```python\n{CODE}```\ntrailing")).text == CODE
    assert scor.judge(answer("just prose, no code at all, quite long enough")).reason == (
        code.NO_CODE_BLOCK
    )


def test_math_keeps_text_and_drops_short() -> None:
    math = stage("math")
    long_text = "We solve 2x + 3 = 11. Subtract 3 to get 2x = 8, divide by 2: x = 4."
    assert math.judge(answer(long_text)).text == long_text
    assert math.judge(answer("x = 4")).reason == llm.TOO_SHORT


def test_responses_keep_the_usable_ones() -> None:
    response = stage("response")
    result = GenerationResult(
        "r",
        10,
        (
            Completion("A good answer.", "stop", 3),
            Completion("cut", "length", 50),
            Completion("  ", "stop", 1),
        ),
    )
    verdict = response.judge(result)
    assert verdict.reason is None
    assert verdict.responses == ("A good answer.",)
    assert verdict.meta["responses_dropped"] == {llm.EMPTY_ANSWER: 1, llm.TRUNCATED: 1}
    only_bad = GenerationResult("r", 10, (Completion("cut", "length", 50),))
    assert response.judge(only_bad).reason == llm.TRUNCATED


def test_request_rendering_and_n() -> None:
    translate = stage("translate", language="Japanese")
    request = translate.request("k1", {"text": "Hello there"})
    assert request.request_id == "translate:k1"
    assert request.n == 1
    assert any("Japanese" in m.content for m in request.messages)
    assert stage("response").request("k", {"text": "hi"}).n is None
    assert stage("sgcr").request("k", {"text": CODE}).messages[-1] == ChatMessage("user", CODE)


def test_records_keep_fields_and_carry_metadata() -> None:
    sgcr = stage("sgcr")
    record = {"id": "a", "text": "old code", "lang": "py"}
    result = answer(sgcr_answer())
    out = sgcr.output_record(record, result, sgcr.judge(result))
    assert out["id"] == "a" and out["lang"] == "py" and out["text"] == CODE
    meta = out[recordfields.META_FIELD]["sgcr"]
    assert meta["prompt_tokens"] == 20 and meta["generated_tokens"] == 9
    assert meta["prompt_sha256"] == sgcr.prompt.sha256
    scor = stage("scor")
    later = scor.output_record(out, result, llm.Verdict(None, text="new"))
    assert set(later[recordfields.META_FIELD]) == {"sgcr", "scor"}
    rejected = scor.reject_record(out, result, llm.Verdict(llm.TOO_SHORT, detail="3 characters"))
    assert rejected[REASON_FIELD] == llm.TOO_SHORT and rejected[recordfields.STAGE_FIELD] == "scor"


def test_precheck() -> None:
    sgcr = stage("sgcr")
    bad = RawRecord("f.jsonl", 0, None, "invalid_json: Expecting value")
    assert sgcr.precheck(bad) == llm.Verdict("invalid_json", detail="Expecting value")
    assert sgcr.precheck(RawRecord("f", 0, {"id": 1})).reason == llm.MISSING_TEXT  # type: ignore[union-attr]
    assert sgcr.precheck(RawRecord("f", 0, {"text": 3})).reason == llm.TEXT_NOT_STRING  # type: ignore[union-attr]
    assert sgcr.precheck(RawRecord("f", 0, {"text": CODE})) is None


def test_translate_needs_language() -> None:
    with pytest.raises(ValueError, match="language"):
        stage("translate").request("k", {"text": "hello"})
