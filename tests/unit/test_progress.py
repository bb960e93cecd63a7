"""Progress: bars only on a terminal; elsewhere one JSON line per interval and one at the end."""

from __future__ import annotations

import io
import json

import pytest

from palimpsest.progress import INTERVAL_ENV, ProgressLines, progress_display


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_lines_at_most_one_per_interval_with_rate_and_eta() -> None:
    out, clock = io.StringIO(), Clock()
    lines = ProgressLines("filter", 6000, out, interval=10.0, clock=clock)
    for i in range(6000):  # 100 records a second for 60 s
        clock.now = (i + 1) / 100
        lines.update(1)
    lines.close()
    lines.close()
    written = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(written) == 7  # at 10, 20, ... 60 s, and the end
    assert "\r" not in out.getvalue()
    first = written[0]
    assert first["progress"] == "filter"
    assert first["total"] == 6000
    assert first["records"] == 1000
    assert first["rate"] == 100.0
    assert first["eta_seconds"] == 50
    assert written[-1]["records"] == 6000
    assert written[-1]["eta_seconds"] == 0


def test_unknown_total_has_no_eta() -> None:
    out, clock = io.StringIO(), Clock()
    lines = ProgressLines("scor", None, out, interval=10.0, clock=clock)
    clock.now = 4.0
    lines.update(8)
    lines.close()
    (line,) = [json.loads(text) for text in out.getvalue().splitlines()]
    assert line == {"progress": "scor", "records": 8, "total": None, "rate": 2.0,
                    "eta_seconds": None}  # fmt: skip


def test_log_mode_when_not_a_terminal() -> None:
    out = io.StringIO()
    progress, close = progress_display(enabled=True, stream=out, interval=3600.0)
    tick = progress("filter", 0, 3)
    for _ in range(3):
        tick(1)
    close()
    assert [json.loads(line)["records"] for line in out.getvalue().splitlines()] == [3]


def test_bars_on_a_terminal() -> None:
    out = Terminal()
    progress, close = progress_display(enabled=True, stream=out)
    tick = progress("filter", 0, 3)
    for _ in range(3):
        tick(1)
    close()
    text = out.getvalue()
    assert "\r" in text
    assert "3/3" in text
    assert '"progress"' not in text


def test_disabled_writes_nothing() -> None:
    out = io.StringIO()
    progress, close = progress_display(enabled=False, stream=out)
    progress("filter", 0, 3)(3)
    close()
    assert out.getvalue() == ""


def test_interval_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    monkeypatch.setenv(INTERVAL_ENV, "0")
    progress, close = progress_display(enabled=True, stream=out)
    tick = progress("filter", 0, 2)
    tick(1)
    tick(1)
    close()
    assert len(out.getvalue().splitlines()) == 3
    monkeypatch.setenv(INTERVAL_ENV, "soon")
    with pytest.raises(ValueError, match=INTERVAL_ENV):
        progress_display(enabled=True, stream=out)[0]("filter", 0, 1)
