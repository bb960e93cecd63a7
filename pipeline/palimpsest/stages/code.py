"""The SwallowCode rewrite stages' answers: SGCR (style-guided) and SCOR (self-contained).

SGCR's answer has three sections: an evaluation score, suggestions, and the improved code in a
```python block, which is what is kept (the score and suggestions go into the metadata). SCOR
keeps the first fenced block of its answer. Both drop outputs of 50 characters or fewer, and,
beyond the published rules, rewritten code that no longer compiles.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from palimpsest.engines.base import Completion
from palimpsest.stages.filter import syntax_problem
from palimpsest.stages.llm import MIN_OUTPUT_CHARS, MODEL_SCORE, Verdict, check_text

NO_CODE_BLOCK: Final = "no_code_block"
REWRITE_SYNTAX: Final = "rewrite_syntax_error"
PYTHON_LANGUAGES: Final = frozenset({"python", "py", "python3"})

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+.-]*)[^\n]*\n(.*?)^[ \t]*```", re.DOTALL | re.MULTILINE)
_SCORE = re.compile(r"score\W{0,6}(\d{1,2}(?:\.\d+)?)(?:\s*/\s*10)?", re.IGNORECASE)
_SUGGESTIONS = re.compile(
    r"suggestions?\W*\n?(.*?)(?=^\W*improved code|```|\Z)", re.IGNORECASE | re.DOTALL | re.MULTILINE
)


@dataclass(frozen=True)
class Fence:
    """One fenced block of an answer: its info-string language (lowercase, may be empty)."""

    language: str
    body: str


def fenced_blocks(answer: str) -> list[Fence]:
    """The closed fenced blocks of a Markdown answer, in order."""
    return [Fence(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(answer)]


def first_fenced_block(answer: str) -> str | None:
    """SCOR's rule: the body of the first fenced block, whatever its language."""
    blocks = fenced_blocks(answer)
    return blocks[0].body if blocks else None


def python_block(answer: str) -> str | None:
    """SGCR's improved code: the last ```python block (suggestions may quote snippets
    before it)."""
    blocks = [b for b in fenced_blocks(answer) if b.language in PYTHON_LANGUAGES]
    return blocks[-1].body if blocks else None


@dataclass(frozen=True)
class SgcrAnswer:
    """The three sections of an SGCR answer; any of them may be missing."""

    score: float | None
    suggestions: str
    code: str | None


def parse_sgcr(answer: str) -> SgcrAnswer:
    """Score (1-10, else None), suggestions text and improved code of an SGCR answer."""
    score: float | None = None
    match = _SCORE.search(answer)
    if match is not None:
        value = float(match.group(1))
        score = value if 0 <= value <= 10 else None
    suggestions = _SUGGESTIONS.search(answer)
    text = suggestions.group(1).strip() if suggestions else ""
    return SgcrAnswer(score, text, python_block(answer))


def check_code(code: str | None) -> Verdict | None:
    """Code outputs: present, long enough, not repetitive, and still compiling."""
    if code is None:
        return Verdict(NO_CODE_BLOCK)
    problem = check_text(code, MIN_OUTPUT_CHARS)
    if problem is not None:
        return problem
    syntax = syntax_problem(code)
    if syntax is not None:
        return Verdict(REWRITE_SYNTAX, detail=f"{syntax[0]}: {syntax[1]}")
    return None


def judge_sgcr(completion: Completion) -> Verdict:
    parsed = parse_sgcr(completion.text)
    meta = {MODEL_SCORE: parsed.score, "suggestions": parsed.suggestions}
    problem = check_code(parsed.code)
    if problem is not None:
        return Verdict(problem.reason, detail=problem.detail, meta=meta)
    return Verdict(None, text=parsed.code, meta=meta)


def judge_scor(completion: Completion) -> Verdict:
    code = first_fenced_block(completion.text)
    return check_code(code) or Verdict(None, text=code)
