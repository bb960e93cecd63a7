"""What the CPU stages over records share: the verdict on an unusable item, and the counting.

A record stage decides keep-or-reason per record; this module turns that decision into exactly
one call of `keep` or `reject` (the reject carrying its reason) and one count in `Stats`, and
gives the same reasons for items that have no usable text (undecodable, no text field, a text
that is not a string), whichever stage meets them first.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from palimpsest.recordfields import DETAIL_FIELD, REASON_FIELD, SCORE_FIELD
from palimpsest.records import Fields, RawRecord, Record
from palimpsest.stats import Stats

Verdict = tuple[str | None, Record]
"""(None, record) to keep it, else (reason, record with its detail)."""


def input_problem(raw: RawRecord, fields: Fields) -> Verdict | None:
    """The reject of an item without a usable text: undecodable, or its text field missing
    or not a string. None when the text is a string (possibly empty)."""
    if raw.record is None:
        reason, _, detail = (raw.error or "invalid_json").partition(": ")
        bad = {"source": raw.source, "position": raw.position, "raw": raw.raw}
        return reason, {**bad, DETAIL_FIELD: detail}
    record = raw.record
    name = fields.text
    if name not in record:
        return "missing_text", {**record, DETAIL_FIELD: f"no field {name!r}"}
    text = record[name]
    if not isinstance(text, str):
        return "text_not_string", {**record, DETAIL_FIELD: f"{name!r} is {type(text).__name__}"}
    return None


def emit(
    verdict: Verdict,
    keep: Callable[[Record], None],
    reject: Callable[[Record], None],
    stats: Stats,
) -> None:
    """One record to `keep` or to `reject` (with its reason), counted once."""
    reason, record = verdict
    if SCORE_FIELD in record:
        stats.add_score(float(record[SCORE_FIELD]))
    if reason is None:
        stats.keep()
        keep(record)
    else:
        stats.reject(reason)
        reject({**record, REASON_FIELD: reason})


class VerdictStage:
    """A record stage that judges each record on its own, in order: subclasses give
    `verdict`; running, counting and timing are done here."""

    def verdict(self, raw: RawRecord) -> Verdict:
        raise NotImplementedError

    def run(
        self,
        items: Iterable[RawRecord],
        keep: Callable[[Record], None],
        reject: Callable[[Record], None],
        stats: Stats,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        started = time.monotonic()
        for raw in items:
            emit(self.verdict(raw), keep, reject, stats)
            if progress:
                progress(1)
        stats.seconds += time.monotonic() - started
