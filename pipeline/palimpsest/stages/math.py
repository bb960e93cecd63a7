"""The SwallowMath rewrite stage's answers: the rewritten text is kept as it is.

The prompt asks for the problem and its solution without page boilerplate, context restored,
explained step by step; there is nothing to extract, so only the shared output rules apply
(more than 50 characters, not repetitive).
"""

from __future__ import annotations

from palimpsest.engines.base import Completion
from palimpsest.stages.llm import MIN_OUTPUT_CHARS, Verdict, check_text


def judge_math(completion: Completion) -> Verdict:
    text = completion.text.strip()
    return check_text(text, MIN_OUTPUT_CHARS) or Verdict(None, text=text)
