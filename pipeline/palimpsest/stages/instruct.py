"""The instruct recipe's stages: translate an instruction, then sample responses to it.

The translation replaces the instruction (the original goes into the metadata); a translated
instruction may be short ("Hello!"), so only emptiness and repetition reject it. The response
stage samples `n` answers per instruction and keeps every usable one; the record is rejected
only when none is usable.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from palimpsest.engines.base import FINISH_LENGTH, Completion
from palimpsest.stages.llm import EMPTY_ANSWER, TRUNCATED, Verdict, check_text


def judge_translation(completion: Completion) -> Verdict:
    text = completion.text.strip()
    return check_text(text, 0) or Verdict(None, text=text)


def judge_responses(completions: tuple[Completion, ...]) -> Verdict:
    """Keep every usable response; reject the record only when none is usable."""
    kept: list[str] = []
    dropped: Counter[str] = Counter()
    for completion in completions:
        text = completion.text.strip()
        problem = Verdict(TRUNCATED) if completion.finish_reason == FINISH_LENGTH else None
        problem = problem or check_text(text, 0)
        if problem is None:
            kept.append(text)
        else:
            dropped[problem.reason or ""] += 1
    meta: dict[str, Any] = {"responses_dropped": dict(sorted(dropped.items()))}
    if not kept:
        return Verdict(dropped.most_common(1)[0][0] if dropped else EMPTY_ANSWER, meta=meta)
    return Verdict(None, meta=meta, responses=tuple(kept))
