"""Our filter against the published method (a pylint process per sample), on real files."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from palimpsest.lint.pool import LintPool
from palimpsest.lint.reference import published_score
from palimpsest.records import Fields, RawRecord, Record
from palimpsest.stages.filter import CodeFilter, FilterSettings
from palimpsest.stats import Stats

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "data" / "python-sample.jsonl.gz"
EDGE_CASES = [
    "# only a comment\n",
    "x = 1  # a\n# b\n# c\n# d\n",
    "import os\nimport sys\n",
    "from random import *\nprint(randint(1, 2))\n",
    "def f():\n    return undefined_name\n",
]


def samples() -> list[str]:
    with gzip.open(SAMPLE, "rt", encoding="utf-8") as handle:
        texts = [json.loads(line)["text"] for line in handle]
    return texts[::25] + EDGE_CASES


def run(texts: list[str], exact: bool) -> list[Record]:
    out: list[Record] = []
    items = [RawRecord("t", i, {"id": i, "text": t}) for i, t in enumerate(texts)]
    settings = FilterSettings(exact_scores=exact)
    with LintPool(2) as pool:
        CodeFilter(settings, pool, Fields(), 2).run(items, out.append, out.append, Stats())
    return sorted(out, key=lambda r: r["id"])


def test_scores_and_decisions_match_the_published_method(tmp_path: Path) -> None:
    texts = samples()
    reference = [published_score(t, tmp_path) for t in texts]
    exact = run(texts, exact=True)
    fast = run(texts, exact=False)
    for text, ref, ours, quick in zip(texts, reference, exact, fast, strict=True):
        assert (
            ours.get("pylint_score") == pytest.approx(ref, abs=0.01)
            if ref is not None
            else ("pylint_score" not in ours)
        ), text[:200]
        published_keep = ref is not None and ref >= 7.0
        assert ("reject_reason" not in ours) == published_keep
        assert ("reject_reason" not in quick) == published_keep
    assert sum(1 for r in exact if "reject_reason" not in r) >= 5
    assert sum(1 for r in exact if r.get("reject_reason") == "low_pylint_score") >= 3
