"""What an LLM stage sends to the engine, and how its answer becomes a kept record or a reject.

A stage turns one record into one `GenerationRequest` and judges the engine's answer: keep a
new text (with the stage's metadata) or reject the record with a reason. Each stage's own rule
for reading an answer is its registry entry's judge (`code`, `math`, `instruct`); what every
LLM stage shares lives here: the prompt rendering, the engine error codes and truncation as
reasons, the output rules (long enough, not repetitive) and the record metadata.

Judging never raises and never talks to storage: the runner (see `rewrite.runner`) does the
counting, the writing and the checkpointing, so this module is plain functions over strings
that unit tests can drive without an engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from palimpsest.engines.base import FINISH_LENGTH, GenerationRequest, GenerationResult
from palimpsest.prompts import Prompt
from palimpsest.recordfields import (
    DETAIL_FIELD,
    META_FIELD,
    REASON_FIELD,
    RESPONSES_FIELD,
    STAGE_FIELD,
)
from palimpsest.records import Fields, RawRecord, Record
from palimpsest.repetition import is_repetitive

if TYPE_CHECKING:
    from palimpsest.stages.registry import StageDef

MIN_OUTPUT_CHARS: Final = 50
"""Published rule for code and math: outputs of 50 characters or fewer are dropped."""

# Reject reasons every LLM stage may give (engine error codes such as prompt_too_long pass
# through as they are).
TRUNCATED: Final = "truncated"
TOO_SHORT: Final = "too_short"
REPETITION: Final = "repetition"
EMPTY_ANSWER: Final = "empty_answer"
MISSING_TEXT: Final = "missing_text"
TEXT_NOT_STRING: Final = "text_not_string"
EMPTY_TEXT: Final = "empty_text"
LOW_MODEL_SCORE: Final = "low_model_score"
NO_MODEL_SCORE: Final = "no_model_score"
MODEL_SCORE: Final = "score"
"""The key under which a judge keeps the model's own score of the input in its metadata."""


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


class RewriteStage:
    """One LLM stage of a job: its prompt, how a record becomes a request, and the verdict.

    `values` fills the prompt's placeholders other than `{{text}}` (e.g. `{{language}}`). A
    stage whose entry judges all samples asks for the sampling settings' `n` answers; every
    other stage asks for one.
    """

    def __init__(
        self,
        entry: StageDef,
        prompt: Prompt,
        fields: Fields,
        values: Mapping[str, str] | None = None,
        min_score: float | None = None,
    ) -> None:
        if entry.judge is None and entry.judge_samples is None:
            raise ValueError(f"stage {entry.name!r} is not an LLM stage")
        self.entry = entry
        self.kind = entry.name
        self.prompt = prompt
        self.fields = fields
        self.values = dict(values or {})
        self.min_score = min_score
        self.n = None if entry.judge_samples is not None else 1

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
        values = {**self.values, "text": str(record[self.fields.text])}
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
        if self.entry.judge_samples is not None:
            return self.entry.judge_samples(result.completions)
        completion = result.completions[0]
        if completion.finish_reason == FINISH_LENGTH:
            return Verdict(TRUNCATED, detail=f"{completion.generated_tokens} tokens")
        assert self.entry.judge is not None
        return self.screen(self.entry.judge(completion))

    def screen(self, verdict: Verdict) -> Verdict:
        """A kept answer whose own score is below `min_score` (or has none) as a reject."""
        if self.min_score is None or verdict.reason is not None:
            return verdict
        score = verdict.meta.get(MODEL_SCORE)
        if score is None:
            return Verdict(NO_MODEL_SCORE, meta=verdict.meta)
        if score < self.min_score:
            detail = f"score {score:g} < {self.min_score:g}"
            return Verdict(LOW_MODEL_SCORE, detail=detail, meta=verdict.meta)
        return verdict

    def metadata(self, result: GenerationResult | None, verdict: Verdict) -> dict[str, Any]:
        """This stage's sub-object of the record's `rewrite` metadata."""
        meta: dict[str, Any] = {"prompt_sha256": self.prompt.sha256}
        if result is not None:
            meta["prompt_tokens"] = result.prompt_tokens
            meta["generated_tokens"] = result.generated_tokens
            meta["finish_reasons"] = [c.finish_reason for c in result.completions]
        meta.update(self.values)
        meta.update(verdict.meta)
        return meta

    def output_record(self, record: Record, result: GenerationResult, verdict: Verdict) -> Record:
        """The kept record: input fields, the new text (or responses), the stage metadata."""
        out = {**record, META_FIELD: self._meta_with(record, result, verdict)}
        if verdict.responses is not None:
            out[RESPONSES_FIELD] = list(verdict.responses)
        else:
            if self.entry.keeps_original:
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
