"""Progress of a stage: bars on a terminal, one JSON line per interval everywhere else.

A bar redraws itself with carriage returns many times a second; in a file or a pod log each
redraw is a line (a 6,000-record filter run wrote about 600). So bars are drawn only when
stderr is a terminal; otherwise each stage writes at most one line per interval, and one when
it ends, as a JSON object a log pipeline can parse:

    {"progress": "filter", "records": 1200, "total": 6000, "rate": 41.3, "eta_seconds": 116}

(`total` and `eta_seconds` are null while the stage's record count is unknown.)
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import IO, Any, Final

Tick = Callable[[int], None]
Progress = Callable[[str, int, int | None], Tick]
"""(stage kind, position among the run's stages, expected records or None) -> a callback
taking the number of records just finished (the shape `palimpsest.localrun` calls)."""

INTERVAL_ENV: Final = "PALIMPSEST_PROGRESS_SECONDS"
DEFAULT_INTERVAL: Final = 30.0
"""Seconds between two progress lines of a stage when stderr is not a terminal (override with
$PALIMPSEST_PROGRESS_SECONDS): often enough to see a pod move, rare enough to keep logs short."""


def interval_seconds() -> float:
    value = os.environ.get(INTERVAL_ENV)
    if not value:
        return DEFAULT_INTERVAL
    try:
        seconds = float(value)
    except ValueError as exc:
        raise ValueError(f"{INTERVAL_ENV}: expected seconds, got {value!r}") from exc
    return max(0.0, seconds)


class ProgressLines:
    """One stage's progress as JSON lines, at most one per `interval` and one at the end."""

    def __init__(
        self,
        kind: str,
        total: int | None,
        stream: IO[str],
        interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kind = kind
        self.total = total
        self.records = 0
        self._stream = stream
        self._interval = interval
        self._clock = clock
        self._started = clock()
        self._last = self._started
        self._closed = False

    def update(self, records: int) -> None:
        self.records += records
        now = self._clock()
        if now - self._last >= self._interval:
            self._last = now
            self._write(now)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._write(self._clock())

    def line(self, now: float) -> dict[str, Any]:
        elapsed = now - self._started
        rate = self.records / elapsed if elapsed > 0 else 0.0
        eta: int | None = None
        if self.total is not None and rate > 0:
            eta = round(max(0, self.total - self.records) / rate)
        return {
            "progress": self.kind,
            "records": self.records,
            "total": self.total,
            "rate": round(rate, 2),
            "eta_seconds": eta,
        }

    def _write(self, now: float) -> None:
        self._stream.write(json.dumps(self.line(now)) + "\n")
        self._stream.flush()


def progress_display(
    enabled: bool, stream: IO[str] | None = None, interval: float | None = None
) -> tuple[Progress, Callable[[], None]]:
    """A progress factory for the stages of a run, and a function ending every display:
    tqdm bars when `stream` (stderr) is a terminal, JSON lines otherwise, nothing if disabled."""
    out = stream or sys.stderr
    closers: list[Callable[[], None]] = []

    def open_display(kind: str, position: int, total: int | None) -> Tick:
        if not enabled:
            return lambda _records: None
        if out.isatty():
            return _bar(kind, position, total, out, closers)
        lines = ProgressLines(
            kind, total, out, interval_seconds() if interval is None else interval
        )
        closers.append(lines.close)
        return lines.update

    def close() -> None:
        for closer in closers:
            closer()

    return open_display, close


def _bar(
    kind: str, position: int, total: int | None, out: IO[str], closers: list[Callable[[], None]]
) -> Tick:
    from tqdm import tqdm

    bar = tqdm(total=total, desc=f"{kind:<9}", unit="rec", position=position, file=out)
    closers.append(bar.close)
    return bar.update  # type: ignore[no-any-return]
