"""The repetition rule on long and hostile lines: same decisions as the published regular
expression on ordinary texts, bounded work on crafted ones."""

from __future__ import annotations

import random
import re
import time

from palimpsest.repetition import MAX_LINE_CHARS, is_repetitive

PUBLISHED_REPETITION = re.compile(r"(.{100,})(\1)+")
# Generous: the bounded check takes well under a second on these; the old one took minutes.
GUARD_SECONDS = 30.0


def hostile_line(chars: int, seed: int = 3) -> str:
    """One 150-character block recurring every ~155 characters, never twice in a row."""
    rng = random.Random(seed)
    block = "".join(rng.choice("abcdef") for _ in range(150))
    parts: list[str] = []
    size = 0
    i = 0
    while size < chars:
        parts.append(f"{block}{i}")
        size += len(parts[-1])
        i += 1
    return "".join(parts)[:chars]


def timed(text: str) -> tuple[bool, float]:
    started = time.monotonic()
    answer = is_repetitive(text)
    return answer, time.monotonic() - started


def test_long_lines_get_the_published_decision() -> None:
    rng = random.Random(11)
    for _ in range(30):
        block = "".join(rng.choice("abc d") for _ in range(rng.randint(90, 140)))
        left = "".join(rng.choice("xyz w") for _ in range(rng.randint(0, 1500)))
        right = "".join(rng.choice("xyz w") for _ in range(rng.randint(0, 1500)))
        text = "head\n" + left + block * rng.randint(1, 2) + right + "\ntail\n"
        expected = len(text) >= 1000 and PUBLISHED_REPETITION.search(text) is not None
        assert is_repetitive(text) == expected


def test_a_hostile_block_pattern_has_no_repeat_and_is_decided_as_such() -> None:
    line = hostile_line(20_000)
    assert PUBLISHED_REPETITION.search(line[:3000]) is None
    assert is_repetitive(line) is False


def test_a_two_megabyte_hostile_line_finishes() -> None:
    answer, seconds = timed(hostile_line(2_000_000))
    assert answer is False
    assert seconds < GUARD_SECONDS


def test_a_two_megabyte_text_of_hostile_lines_finishes() -> None:
    text = "\n".join(hostile_line(20_000, seed) for seed in range(100))
    answer, seconds = timed(text)
    assert answer is False
    assert seconds < GUARD_SECONDS


def test_a_repeat_early_in_a_two_megabyte_line_is_found() -> None:
    rng = random.Random(5)
    noise = "".join(rng.choice("0123456789abcdef") for _ in range(2_000_000))
    block = "".join(rng.choice("ghijk") for _ in range(120))
    assert is_repetitive(noise[:5000] + block + block + noise[5000:])
    assert not is_repetitive(noise)


def test_lines_past_the_examined_length_are_not_searched_beyond_it() -> None:
    rng = random.Random(9)
    noise = "".join(rng.choice("0123456789abcdef") for _ in range(MAX_LINE_CHARS + 10))
    block = "".join(rng.choice("ghijk") for _ in range(120))
    assert not is_repetitive(noise + block + block)
    assert is_repetitive(noise + "\n" + block + block)
