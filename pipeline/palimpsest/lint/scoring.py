"""The published pylint score rule, as pure functions.

Score = pylint's rating as printed (2 decimals), times (1 - comment ratio), where the ratio is
COMMENT tokens over all tokens `tokenize.generate_tokens` yields for the source (0 when the
source does not tokenize); a ratio of exactly 1.0 scores 0. Samples with no statements get no
rating and are never kept. These functions also give the exact bounds the fast path uses to
stop linting a sample once no rating could still reach the threshold.
"""

from __future__ import annotations

import io
import tokenize

# The published pylint invocation: flags and disabled messages, verbatim in effect.
DISABLED_MESSAGES = (
    "E0401",
    "C0114",
    "C0301",
    "C0103",
    "C0116",
    "C0411",
    "R0903",
    "W0511",
    "C0412",
)
PYLINT_ARGS = ("--persistent=n", "--disable=" + ",".join(DISABLED_MESSAGES))

# Keep a sample when its penalised score is at least this (published: 7.0).
DEFAULT_MIN_SCORE = 7.0

# Weight of each message category in pylint's default evaluation expression.
CATEGORY_WEIGHTS = {"error": 5, "warning": 1, "refactor": 1, "convention": 1}


def comment_ratio(source: str) -> float:
    """COMMENT tokens / all tokens; 0.0 when tokenizing fails."""
    total = comments = 0
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            total += 1
            if token.type == tokenize.COMMENT:
                comments += 1
    except (tokenize.TokenError, SyntaxError, ValueError, RecursionError, MemoryError):
        return 0.0
    return comments / total if total else 0.0


def printed_rating(penalty_points: int, statements: int, fatal: bool) -> float:
    """pylint's default rating, rounded as it prints it ("rated at X.XX/10")."""
    if fatal:
        return 0.0
    note = max(0.0, 10.0 - ((float(penalty_points) / statements) * 10))
    return float(f"{note:.2f}")


def penalised(rating: float, ratio: float) -> float:
    """The published score: the printed rating scaled down by the comment ratio."""
    if ratio == 1.0:
        return 0.0
    if ratio > 0:
        return rating * (1 - ratio)
    return rating


def best_possible(ratio: float) -> float:
    """The highest score any rating could give a sample with this comment ratio."""
    return penalised(10.0, ratio)


def score_text(score: object) -> str:
    """A stored score as pylint prints ratings (two decimals); anything else as it is."""
    return f"{score:.2f}" if isinstance(score, float) else str(score)
