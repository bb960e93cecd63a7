"""What each LLM rewrite stage sends to the engine, and what it keeps of the answer.

A stage turns one record into one `GenerationRequest` and judges the engine's answer: keep a
new text (with the stage's metadata) or reject the record with a reason. Parsing follows the
published recipes (SGCR: score, suggestions and the ```python block; SCOR: the first fenced
block; math: the text as it is; instruct: n responses, after an optional translation), and
adds checks of our own that users asked for: rewritten code must still compile, and the
repetition clean-up applies to every output.

Judging never raises and never talks to storage: the runner (see `runner`) does the counting,
the writing and the checkpointing, so this module is plain functions over strings that unit
tests can drive without an engine.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final

from palimpsest.engines.base import FINISH_LENGTH, Completion, GenerationRequest, GenerationResult
from palimpsest.filtering import DETAIL_FIELD, REASON_FIELD, syntax_problem
from palimpsest.prompts import Prompt
from palimpsest.records import Fields, RawRecord, Record
from palimpsest.repetition import is_repetitive

META_FIELD: Final = "rewrite"
"""Record field holding one sub-object per rewrite stage that touched the record."""
STAGE_FIELD: Final = "reject_stage"
"""On a reject: the kind of the stage that rejected it."""
RESPONSES_FIELD: Final = "responses"
"""Instruct recipe: the list of generated responses, beside the (possibly translated)
instruction in the text field."""

MIN_OUTPUT_CHARS: Final = 50
"""Published rule for code and math: outputs of 50 characters or fewer are dropped."""

# Reject reasons of the rewrite stages (engine error codes such as prompt_too_long pass
# through as they are).
TRUNCATED: Final = "truncated"
NO_CODE_BLOCK: Final = "no_code_block"
TOO_SHORT: Final = "too_short"
REWRITE_SYNTAX: Final = "rewrite_syntax_error"
REPETITION: Final = "repetition"
EMPTY_ANSWER: Final = "empty_answer"
MISSING_TEXT: Final = "missing_text"
TEXT_NOT_STRING: Final = "text_not_string"
EMPTY_TEXT: Final = "empty_text"

DEFAULT_FIELDS: Final = Fields()

CODE_STAGES: Final = frozenset({"sgcr", "scor"})
PYTHON_LANGUAGES: Final = frozenset({"python", "py", "python3"})

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n(.*?)^[ \t]*```", re.DOTALL | re.MULTILINE)
_SCORE = re.compile(r"score\W{0,6}(\d{1,2}(?:\.\d+)?)(?:\s*/\s*10)?", re.IGNORECASE)
_SUGGESTIONS = re.compile(
    r"suggestions?\W*\n?(.*?)(?=^\W*improved code|```|\Z)", re.IGNORECASE | re.DOTALL | re.MULTILINE
)


@dataclass(frozen=True)
class Fence:
    """One fenced block of an answer: its info-string language (lowercase, may be empty)."""

    language: str
    body: str


def fenced_blocks(answer: str) -> list[Fence]:
    """The closed fenced blocks of a Markdown answer, in order."""
    return [Fence(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(answer)]


def first_fenced_block(answer: str) -> str | None:
    """SCOR's rule: the body of the first fenced block, whatever its language."""
    blocks = fenced_blocks(answer)
    return blocks[0].body if blocks else None


def python_block(answer: str) -> str | None:
    """SGCR's improved code: the last ```python block (suggestions may quote snippets
    before it)."""
    blocks = [b for b in fenced_blocks(answer) if b.language in PYTHON_LANGUAGES]
    return blocks[-1].body if blocks else None


@dataclass(frozen=True)
class SgcrAnswer:
    """The three sections of an SGCR answer; any of them may be missing."""

    score: float | None
    suggestions: str
    code: str | None


def parse_sgcr(answer: str) -> SgcrAnswer:
    """Score (1-10, else None), suggestions text and improved code of an SGCR answer."""
    score: float | None = None
    match = _SCORE.search(answer)
    if match is not None:
        value = float(match.group(1))
        score = value if 0 <= value <= 10 else None
    suggestions = _SUGGESTIONS.search(answer)
    text = suggestions.group(1).strip() if suggestions else ""
    return SgcrAnswer(score, text, python_block(answer))


@dataclass(frozen=True)
class Verdict:
    """A stage's decision on one record: `reason` None keeps `text` (and `responses`)."""

    reason: str | None
    text: str | None = None
    detail: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    responses: tuple[str, ...] | None = None


def check_text(text: str, min_chars: int) -> Verdict | None:
    """The output rules every stage shares: long enough, not repetitive."""
    if not text.strip():
        return Verdict(EMPTY_ANSWER)
    if len(text.strip()) <= min_chars:
        return Verdict(TOO_SHORT, detail=f"{len(text.strip())} characters")
    if is_repetitive(text):
        return Verdict(REPETITION)
    return None


def check_code(code: str | None) -> Verdict | None:
    """Code outputs: present, long enough, not repetitive, and still compiling."""
    if code is None:
        return Verdict(NO_CODE_BLOCK)
    problem = check_text(code, MIN_OUTPUT_CHARS)
    if problem is not None:
        return problem
    syntax = syntax_problem(code)
    if syntax is not None:
        return Verdict(REWRITE_SYNTAX, detail=f"{syntax[0]}: {syntax[1]}")
    return None


def judge_sgcr(completion: Completion) -> Verdict:
    parsed = parse_sgcr(completion.text)
    meta = {"score": parsed.score, "suggestions": parsed.suggestions}
    problem = check_code(parsed.code)
    if problem is not None:
        return Verdict(problem.reason, detail=problem.detail, meta=meta)
    return Verdict(None, text=parsed.code, meta=meta)


def judge_scor(completion: Completion) -> Verdict:
    code = first_fenced_block(completion.text)
    return check_code(code) or Verdict(None, text=code)


def judge_math(completion: Completion) -> Verdict:
    text = completion.text.strip()
    return check_text(text, MIN_OUTPUT_CHARS) or Verdict(None, text=text)


def judge_translation(completion: Completion) -> Verdict:
    # A translated instruction may be short ("Hello!"): only emptiness and repetition count.
    text = completion.text.strip()
    return check_text(text, 0) or Verdict(None, text=text)


def judge_responses(completions: tuple[Completion, ...]) -> Verdict:
    """Instruct: keep every usable response; reject the record only when none is usable."""
    kept: list[str] = []
    dropped: Counter[str] = Counter()
    for completion in completions:
        text = completion.text.strip()
        problem = Verdict(TRUNCATED) if completion.finish_reason == FINISH_LENGTH else None
        problem = problem or check_text(text, 0)
        if problem is None:
            kept.append(text)
        else:
            dropped[problem.reason or ""] += 1
    meta: dict[str, Any] = {"responses_dropped": dict(sorted(dropped.items()))}
    if not kept:
        return Verdict(dropped.most_common(1)[0][0] if dropped else EMPTY_ANSWER, meta=meta)
    return Verdict(None, meta=meta, responses=tuple(kept))


_JUDGES = {
    "sgcr": judge_sgcr,
    "scor": judge_scor,
    "math": judge_math,
    "translate": judge_translation,
}


class RewriteStage:
    """One LLM stage of a recipe: its prompt, how a record becomes a request, and the verdict.

    `kind` is a key of `palimpsest.chain.STAGE_PROMPTS`; `language` fills `{{language}}` of
    the translation prompt. The response stage asks for the sampling settings' `n` responses;
    every other stage asks for one answer.
    """

    def __init__(
        self,
        kind: str,
        prompt: Prompt,
        fields: Fields = DEFAULT_FIELDS,
        language: str | None = None,
    ) -> None:
        if kind not in {*_JUDGES, "response"}:
            raise ValueError(f"unknown rewrite stage {kind!r}")
        if kind == "translate" and not language:
            raise ValueError("language: required by the translate stage")
        self.kind = kind
        self.prompt = prompt
        self.fields = fields
        self.language = language
        self.n = None if kind == "response" else 1

    def precheck(self, raw: RawRecord) -> Verdict | None:
        """A verdict that needs no engine: an undecodable item or an unusable text field."""
        if raw.record is None:
            reason, _, detail = (raw.error or "invalid_json").partition(": ")
            return Verdict(reason, detail=detail)
        name = self.fields.text
        if name not in raw.record:
            return Verdict(MISSING_TEXT, detail=f"no field {name!r}")
        text = raw.record[name]
        if not isinstance(text, str):
            return Verdict(TEXT_NOT_STRING, detail=f"{name!r} is {type(text).__name__}")
        if not text.strip():
            return Verdict(EMPTY_TEXT)
        return None

    def request(self, key: str, record: Record) -> GenerationRequest:
        values = {"text": str(record[self.fields.text])}
        if self.language:
            values["language"] = self.language
        messages = self.prompt.render(
            **{k: v for k, v in values.items() if k in self.prompt.fields}
        )
        return GenerationRequest(f"{self.kind}:{key}", messages, n=self.n)

    def judge(self, result: GenerationResult) -> Verdict:
        """Keep or reject on the engine's answer; engine error codes become the reason."""
        if result.error is not None:
            return Verdict(result.error)
        if not result.completions:
            return Verdict(EMPTY_ANSWER)
        if self.kind == "response":
            return judge_responses(result.completions)
        completion = result.completions[0]
        if completion.finish_reason == FINISH_LENGTH:
            return Verdict(TRUNCATED, detail=f"{completion.generated_tokens} tokens")
        return _JUDGES[self.kind](completion)

    def metadata(self, result: GenerationResult | None, verdict: Verdict) -> dict[str, Any]:
        """This stage's sub-object of the record's `rewrite` metadata."""
        meta: dict[str, Any] = {"prompt_sha256": self.prompt.sha256}
        if result is not None:
            meta["prompt_tokens"] = result.prompt_tokens
            meta["generated_tokens"] = result.generated_tokens
            meta["finish_reasons"] = [c.finish_reason for c in result.completions]
        if self.language:
            meta["language"] = self.language
        meta.update(verdict.meta)
        return meta

    def output_record(self, record: Record, result: GenerationResult, verdict: Verdict) -> Record:
        """The kept record: input fields, the new text (or responses), the stage metadata."""
        out = {**record, META_FIELD: self._meta_with(record, result, verdict)}
        if verdict.responses is not None:
            out[RESPONSES_FIELD] = list(verdict.responses)
        else:
            if self.kind == "translate":
                out[META_FIELD][self.kind]["original"] = record[self.fields.text]
            out[self.fields.text] = verdict.text
        return out

    def reject_record(
        self, record: Record, result: GenerationResult | None, verdict: Verdict
    ) -> Record:
        """The rejected record as it came in, with the reason, the stage and its metadata."""
        out = {
            **record,
            META_FIELD: self._meta_with(record, result, verdict),
            REASON_FIELD: verdict.reason,
            STAGE_FIELD: self.kind,
        }
        if verdict.detail:
            out[DETAIL_FIELD] = verdict.detail
        return out

    def _meta_with(
        self, record: Record, result: GenerationResult | None, verdict: Verdict
    ) -> dict[str, Any]:
        previous = record.get(META_FIELD)
        meta = dict(previous) if isinstance(previous, dict) else {}
        meta[self.kind] = self.metadata(result, verdict)
        return meta
