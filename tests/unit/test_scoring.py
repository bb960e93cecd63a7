"""The published score rule and the exact shortcuts built on it."""

from __future__ import annotations

import random
import re

import pytest

from palimpsest.lint.scoring import best_possible, comment_ratio, penalised, printed_rating
from palimpsest.repetition import is_repetitive, line_has_square
from palimpsest.stages.filter import syntax_problem

PUBLISHED_REPETITION = re.compile(r"(.{100,})(\1)+")


def test_comment_ratio_counts_every_token_including_structure() -> None:
    # NAME OP NUMBER COMMENT NEWLINE ENDMARKER -> 1 comment of 6 tokens
    assert comment_ratio("x = 1  # one\n") == pytest.approx(1 / 6)


def test_comment_ratio_is_zero_when_tokenizing_fails() -> None:
    assert comment_ratio("def f(:\n  '''unterminated\n") == 0.0


def test_only_comments_give_a_ratio_below_one_because_of_endmarker() -> None:
    ratio = comment_ratio("# a\n")
    assert 0 < ratio < 1


def test_printed_rating_rounds_like_pylint_prints() -> None:
    # 10 - 10 * 1/3 = 6.666... printed as 6.67
    assert printed_rating(1, 3, fatal=False) == 6.67
    assert printed_rating(100, 3, fatal=False) == 0.0
    assert printed_rating(0, 3, fatal=True) == 0.0


def test_penalty_scales_by_comment_share_and_full_comments_score_zero() -> None:
    assert penalised(9.0, 0.0) == 9.0
    assert penalised(9.0, 0.25) == pytest.approx(6.75)
    assert penalised(9.0, 1.0) == 0.0
    assert best_possible(0.35) == pytest.approx(6.5)


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("def f(:\n", "syntax_error"),
        ("x = 1\x00\n", "null_bytes"),
        ("x = " + "(" * 1000 + "1" + ")" * 1000 + "\n", "too_deeply_nested"),
        ("x = " + "[" * 1000 + "]" * 1000 + "\n", "too_deeply_nested"),
    ],
)
def test_syntax_problems_are_reasons_not_crashes(code: str, reason: str) -> None:
    problem = syntax_problem(code)
    assert problem is not None
    # Deep nesting surfaces as SyntaxError ("too many nested parentheses") in some versions.
    assert problem[0] in {reason, "syntax_error"}


def test_valid_code_has_no_syntax_problem() -> None:
    assert syntax_problem("def f(x: int) -> int:\n    return x + 1\n") is None


def test_repetition_matches_the_published_regex_on_random_texts() -> None:
    rng = random.Random(7)
    for _ in range(200):
        block = "".join(rng.choice("ab c\n") for _ in range(rng.randint(80, 130)))
        filler = "".join(rng.choice("xyz \n") for _ in range(rng.randint(0, 900)))
        repeats = rng.randint(1, 3)
        text = filler[: len(filler) // 2] + block * repeats + filler[len(filler) // 2 :]
        expected = len(text) >= 1000 and PUBLISHED_REPETITION.search(text) is not None
        assert is_repetitive(text) == expected, text


def test_repetition_finds_a_long_repeated_run_and_ignores_short_texts() -> None:
    run = "def handler(event):\n".replace("\n", " ") * 6  # > 100 chars, one line
    assert line_has_square(run + run)
    assert is_repetitive("x" * 2000)
    assert not is_repetitive("x" * 999)
    assert not is_repetitive("".join(f"line {i}\n" for i in range(300)))
