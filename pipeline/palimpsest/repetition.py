"""The published repetition clean-up: drop texts of >= 1000 characters that match
`(.{100,})(\\1)+`, i.e. that hold, within one line, a run of 100 or more characters repeated
back to back.

The regular expression backtracks badly on long lines, so the same condition is decided
exactly by a different route: a repeat of a block of length L >= 100 starting at i means the
100 characters at i reappear at i + L; only pairs of equal 100-character windows are checked.
"""

from __future__ import annotations

# Published minimums: the text length that makes a text a candidate, and the repeated block.
MIN_TEXT_CHARS = 1000
MIN_BLOCK_CHARS = 100


def line_has_square(line: str, block: int = MIN_BLOCK_CHARS) -> bool:
    """True when `line` contains some s + s with len(s) >= block."""
    if len(line) < 2 * block:
        return False
    seen: dict[str, list[int]] = {}
    for q in range(len(line) - block + 1):
        window = line[q : q + block]
        starts = seen.setdefault(window, [])
        for p in starts:
            distance = q - p
            if distance >= block and line[p:q] == line[q : q + distance]:
                return True
        starts.append(q)
    return False


def is_repetitive(text: str) -> bool:
    """The published rule: long text with a back-to-back repeated run of >= 100 characters."""
    if len(text) < MIN_TEXT_CHARS:
        return False
    # `.` excludes only "\n" in Python regular expressions, so lines split on "\n" alone.
    return any(line_has_square(line) for line in text.split("\n"))
