"""The SwallowCode filter stage over a stream of records: syntax check, then pylint score.

Every input item ends in exactly one place: kept (with `pylint_score`) or rejected (with a
`reject_reason`, plus `pylint_score` when one was computed). Counting happens here, once, in
`Stats`. The syntax check runs in this process; pylint runs in a supervised pool of linter
processes, with at most a bounded window of records in flight so memory stays flat.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from palimpsest.lint.pool import (
    DEFAULT_MEMORY_LIMIT,
    DEFAULT_TIME_LIMIT,
    LintOutcome,
    LintPool,
    LintTask,
    default_workers,
)
from palimpsest.lint.scoring import DEFAULT_MIN_SCORE, best_possible, comment_ratio, penalised
from palimpsest.recordfields import DETAIL_FIELD, SCORE_FIELD, SCORE_MAX_FIELD
from palimpsest.records import Fields, RawRecord, Record
from palimpsest.repetition import is_repetitive
from palimpsest.stages.verdicts import emit, input_problem
from palimpsest.stats import Stats

if TYPE_CHECKING:
    from palimpsest.job import Job

# Records in flight per linter process; enough to keep every process busy, small enough that
# a shard's memory does not grow with its length.
WINDOW_PER_WORKER = 8
# Largest sample text (UTF-8 bytes) the filter lints; larger ones are `record_too_large`.
DEFAULT_MAX_RECORD_BYTES = 10_000_000
MIB = 1024 * 1024


@dataclass(frozen=True)
class FilterSettings:
    """The filter's settings, as `spec.filter` gives them."""

    min_score: float = DEFAULT_MIN_SCORE
    """Keep a sample whose penalised pylint score is >= this (0-10). Published: 7.0."""
    time_limit: float = DEFAULT_TIME_LIMIT
    """Seconds one sample may spend in pylint before it is rejected as `pylint_timeout`."""
    exact_scores: bool = False
    """Lint every sample to the end, so every low-score reject carries its exact score
    (slower); otherwise linting stops once 7.0 is out of reach and the reject carries a bound."""
    repetition: bool = False
    """Also drop samples with a back-to-back repeated run of >= 100 characters (the published
    clean-up rule for outputs, applied to inputs)."""
    workers: int | None = None
    """Linter processes per pod or run; None: one per CPU the process may use."""
    memory_limit_mb: int | None = DEFAULT_MEMORY_LIMIT // MIB
    """MiB of address space each linter process may add to its warmed-up size (its baseline,
    ~100-400 MiB). A sample that needs more is rejected as `pylint_memory` and the process
    replaced; a few dozen bytes of code can make astroid's inference allocate gigabytes.
    None: no cap (a limit already set on the process still applies; it is never raised)."""
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    """Samples whose text is larger than this (UTF-8 bytes) are rejected as
    `record_too_large` before compiling or linting."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_score <= 10.0:
            raise ValueError(f"spec.filter.minScore: must be within 0..10, got {self.min_score}")
        if self.time_limit <= 0:
            raise ValueError(f"spec.filter.timeLimitSeconds: must be > 0, got {self.time_limit}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"spec.filter.workers: must be >= 1, got {self.workers}")
        if self.memory_limit_mb is not None and self.memory_limit_mb < 1:
            raise ValueError(
                f"spec.filter.memoryLimitMiB: must be >= 1, got {self.memory_limit_mb}"
            )
        if self.max_record_bytes < 1:
            raise ValueError(
                f"spec.filter.maxRecordBytes: must be >= 1, got {self.max_record_bytes}"
            )

    @property
    def memory_limit(self) -> int | None:
        """`memory_limit_mb` in bytes, as `LintPool` takes it."""
        return None if self.memory_limit_mb is None else self.memory_limit_mb * MIB

    def identity(self) -> dict[str, Any]:
        """The settings that decide the stage's output, for its stage id. The number of workers
        does not; the time limit does (it decides which slow samples are rejected), and so do
        the memory and size limits, and `exact_scores` (it decides whether rejects carry a
        score or a bound)."""
        return {
            "min_score": self.min_score,
            "time_limit": self.time_limit,
            "exact_scores": self.exact_scores,
            "repetition": self.repetition,
            "memory_limit_mb": self.memory_limit_mb,
            "max_record_bytes": self.max_record_bytes,
        }


def syntax_problem(code: str) -> tuple[str, str] | None:
    """(reason, detail) when `code` does not compile; anything compile() raises is caught."""
    try:
        compile(code, "<string>", "exec")
    except (SyntaxError, ValueError) as exc:
        # NUL bytes raise ValueError on older Pythons and SyntaxError on newer ones.
        message = exc.msg if isinstance(exc, SyntaxError) else str(exc)
        if "null bytes" in message:
            return "null_bytes", message
        if isinstance(exc, SyntaxError):
            return "syntax_error", f"{exc.msg} (line {exc.lineno})"
        return "compile_error", message[:200]
    except (RecursionError, MemoryError) as exc:
        return "too_deeply_nested", type(exc).__name__
    except Exception as exc:
        return "compile_error", f"{type(exc).__name__}: {str(exc)[:200]}"
    return None


def utf8_size_exceeds(text: str, limit: int) -> bool:
    """True when `text` is more than `limit` bytes in UTF-8 (encodes only when it must)."""
    if len(text) > limit:
        return True
    if 4 * len(text) <= limit:
        return False
    return len(text.encode("utf-8", "surrogatepass")) > limit


@dataclass
class _Pending:
    record: Record
    ratio: float = 0.0  # comment-token ratio of the text
    verdict: tuple[str | None, Record] | None = None  # (reason or None for kept, record)


@contextlib.contextmanager
def open_filter(job: Job, cpus: int | None = None) -> Iterator[CodeFilter]:
    """The job's filter on a fresh pool of linter processes (closed on exit).

    `cpus`: the CPUs this process may use, the number of linters when the spec sets none."""
    settings = job.filter
    workers = settings.workers or cpus or default_workers()
    with LintPool(workers, settings.time_limit, memory_limit=settings.memory_limit) as pool:
        yield CodeFilter(settings, pool, job.input.fields, workers)


class CodeFilter:
    """Runs syntax -> pylint over records; outputs go to `keep` and `reject` in input order."""

    def __init__(
        self, settings: FilterSettings, pool: LintPool, fields: Fields, workers: int
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.fields = fields
        self.workers = workers

    def run(
        self,
        items: Iterable[RawRecord],
        keep: Callable[[Record], None],
        reject: Callable[[Record], None],
        stats: Stats,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        started = time.monotonic()
        window: deque[_Pending] = deque()
        by_key: dict[int, _Pending] = {}
        limit = WINDOW_PER_WORKER * self.workers

        def drain(block: bool) -> None:
            for outcome in self.pool.collect(timeout=None if block else 0.0):
                pending = by_key.pop(outcome.key)
                pending.verdict = self._lint_verdict(pending, outcome)
            while window and window[0].verdict is not None:
                verdict = window.popleft().verdict
                assert verdict is not None
                emit(verdict, keep, reject, stats)
                if progress:
                    progress(1)

        for key, raw in enumerate(items):
            pending = _Pending(raw.record or {})
            window.append(pending)
            early = self._early_verdict(raw)
            if early is not None:
                pending.verdict = early
            else:
                code = pending.record[self.fields.text]
                pending.ratio = comment_ratio(code)
                ceiling = best_possible(pending.ratio)
                if ceiling < self.settings.min_score and not self.settings.exact_scores:
                    pending.verdict = (
                        "low_pylint_score",
                        {**pending.record, SCORE_MAX_FIELD: ceiling},
                    )
                else:
                    by_key[key] = pending
                    min_score = None if self.settings.exact_scores else self.settings.min_score
                    self.pool.submit(LintTask(key, code, min_score, pending.ratio))
            drain(block=len(window) >= limit)
        while window:
            drain(block=True)
        stats.seconds += time.monotonic() - started

    def _early_verdict(self, raw: RawRecord) -> tuple[str | None, Record] | None:
        """A verdict that needs no pylint: bad input, bad text field, repetition or syntax."""
        problem = input_problem(raw, self.fields)
        if problem is not None:
            return problem
        record = raw.record or {}
        text = record[self.fields.text]
        if utf8_size_exceeds(text, self.settings.max_record_bytes):
            limit = self.settings.max_record_bytes
            return "record_too_large", {**record, DETAIL_FIELD: f"text over {limit} bytes"}
        if not text.strip():
            return "empty_text", record
        syntax = syntax_problem(text)
        if syntax is not None:
            return syntax[0], {**record, DETAIL_FIELD: syntax[1]}
        if self.settings.repetition and is_repetitive(text):
            return "repetition", record
        return None

    def _lint_verdict(self, pending: _Pending, outcome: LintOutcome) -> tuple[str | None, Record]:
        record = pending.record
        if outcome.result is None:
            return outcome.failure or "pylint_error", {**record, DETAIL_FIELD: outcome.detail}
        result = outcome.result
        if result.rating is None:
            if result.parse_error:
                return "pylint_parse_error", {**record, DETAIL_FIELD: result.parse_error}
            return "no_statements", record
        score = penalised(result.rating, pending.ratio)
        if result.stopped_early:
            return "low_pylint_score", {**record, SCORE_MAX_FIELD: score}
        if score >= self.settings.min_score:
            return None, {**record, SCORE_FIELD: score}
        return "low_pylint_score", {**record, SCORE_FIELD: score}
