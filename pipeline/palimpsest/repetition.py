"""The published repetition clean-up: drop texts of >= 1000 characters that match
`(.{100,})(\\1)+`, i.e. that hold, within one line, a run of 100 or more characters repeated
back to back.

The regular expression backtracks badly on long lines, so the same condition is decided
exactly by a different route: a repeat of a block of length L >= 100 starting at i means the
100 characters at i reappear at i + L; only pairs of equal 100-character windows are checked.

That route is still quadratic on a hostile line (one 100-character block recurring thousands
of times with no two copies back to back: 160 kB took minutes), so its work is bounded: each
line is examined up to `MAX_LINE_CHARS`, a text's lines up to `MAX_TEXT_CHARS` in all, and at
most `MAX_PAIR_CHECKS` candidate pairs per text; past a bound the text counts as not
repetitive. Code - even long generated lines - stays far inside all three, so decisions on
real inputs are the exact ones; the bounds only cap what a crafted sample can cost.
"""

from __future__ import annotations

# Published minimums: the text length that makes a text a candidate, and the repeated block.
MIN_TEXT_CHARS = 1000
MIN_BLOCK_CHARS = 100
# Work bounds (see the module docstring): characters of one line, characters of all the lines
# of one text that can hold a repeat, and equal-window pairs compared per text.
MAX_LINE_CHARS = 100_000
MAX_TEXT_CHARS = 500_000
MAX_PAIR_CHECKS = 200_000


class _Budget:
    """Candidate pair comparisons left for one text."""

    def __init__(self, pairs: int) -> None:
        self.pairs = pairs


def line_has_square(line: str, block: int = MIN_BLOCK_CHARS, budget: _Budget | None = None) -> bool:
    """True when `line` contains some s + s with len(s) >= block (within `budget`, if any:
    once it is spent the answer is False)."""
    if len(line) < 2 * block:
        return False
    # Keys are hashes of the windows: a collision costs one comparison, never a wrong answer,
    # because the comparison below covers the window itself.
    seen: dict[int, list[int]] = {}
    for q in range(len(line) - block + 1):
        starts = seen.setdefault(hash(line[q : q + block]), [])
        if budget is not None:
            budget.pairs -= len(starts)
            if budget.pairs < 0:
                return False
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
    budget = _Budget(MAX_PAIR_CHECKS)
    chars_left = MAX_TEXT_CHARS
    # `.` excludes only "\n" in Python regular expressions, so lines split on "\n" alone.
    for line in text.split("\n"):
        if len(line) < 2 * MIN_BLOCK_CHARS:
            continue
        examined = line[: min(MAX_LINE_CHARS, chars_left)]
        chars_left -= len(examined)
        if line_has_square(examined, budget=budget):
            return True
        if chars_left <= 0 or budget.pairs < 0:
            return False
    return False
