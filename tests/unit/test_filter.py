"""The filter stage on hostile input and on the traps of in-process linting.

These start real linter processes (a few seconds), but no services.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from palimpsest.lint.linter import SampleLinter
from palimpsest.lint.pool import LintPool
from palimpsest.records import Fields, RawRecord, Record, read_jsonl
from palimpsest.stages.filter import CodeFilter, FilterSettings
from palimpsest.stats import Stats
from palimpsest.storage import LocalStore

GOOD = '''"""A small, clean module."""


def add(left: int, right: int) -> int:
    """Return the sum."""
    return left + right


print(add(1, 2))
'''

# Comprehension chains make astroid inference slow: linting this takes about 19 s on a quiet
# 2-core machine, so it outlives a 3 s time limit however fast the machine runs at the moment.
SLOW = "\n".join(f"v{i} = [a for a in range({i})]" for i in range(12000)) + "\nprint(v1)\n"


@pytest.fixture(scope="module")
def pool() -> Iterator[LintPool]:
    with LintPool(workers=2, time_limit=20) as lint_pool:
        yield lint_pool


def run_filter(
    pool: LintPool, items: list[RawRecord], **settings: Any
) -> tuple[list[Record], list[Record], Stats]:
    kept: list[Record] = []
    rejected: list[Record] = []
    stats = Stats()
    CodeFilter(FilterSettings(**settings), pool, Fields(), workers=2).run(
        items, kept.append, rejected.append, stats
    )
    return kept, rejected, stats


def records(*texts: Any) -> list[RawRecord]:
    return [RawRecord("t", i, {"id": i, "text": t, "extra": [i]}) for i, t in enumerate(texts)]


def test_good_code_is_kept_with_its_score_and_fields(pool: LintPool) -> None:
    kept, rejected, stats = run_filter(pool, records(GOOD))
    assert rejected == []
    assert kept[0]["pylint_score"] == 10.0
    assert kept[0]["extra"] == [0]
    assert (stats.kept, stats.records_in) == (1, 1)


def test_hostile_input_ends_as_counted_rejects_and_the_shard_completes(tmp_path: Path) -> None:
    path = tmp_path / "hostile.jsonl"
    lines = [
        b"{not json",
        b'{"id": "bytes", "text": "\xff\xfe"}',
        json.dumps({"id": "missing"}).encode(),
        json.dumps({"id": "number", "text": 42}).encode(),
        json.dumps({"id": "empty", "text": "   \n"}).encode(),
        json.dumps({"id": "nul", "text": "x = 1\x00\n"}).encode(),
        json.dumps({"id": "deep", "text": "x = " + "(" * 1000 + "1" + ")" * 1000}).encode(),
        json.dumps({"id": "big", "text": "x = 1\n" * 900_000}).encode(),  # ~5 MB
        json.dumps({"id": "slow", "text": SLOW}).encode(),
        json.dumps({"id": "good", "text": GOOD}).encode(),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    with LintPool(workers=2, time_limit=3) as short_pool:
        kept, rejected, stats = run_filter(
            short_pool, list(read_jsonl(LocalStore(), str(path))), time_limit=3, exact_scores=True
        )
        assert short_pool.restarts >= 1
    reasons = {r.get("id", r.get("raw")): r["reject_reason"] for r in rejected}
    assert [k["id"] for k in kept] == ["good"]
    assert reasons["{not json"] == "invalid_json"
    assert "invalid_utf8" in reasons.values()
    assert reasons["missing"] == "missing_text"
    assert reasons["number"] == "text_not_string"
    assert reasons["empty"] == "empty_text"
    assert reasons["nul"] == "null_bytes"
    assert reasons["deep"] in {"too_deeply_nested", "syntax_error"}
    # ~5 MB of statements: the time limit or the worker's memory cap stops it, whichever
    # comes first on this machine; it is never taken for unparseable code.
    assert reasons["big"] in {"pylint_timeout", "pylint_memory"}
    assert reasons["slow"] == "pylint_timeout"
    assert stats.records_in == len(lines) == stats.kept + stats.rejected


def test_no_statements_is_not_kept(pool: LintPool) -> None:
    kept, rejected, _ = run_filter(pool, records('"""Only a docstring."""\n', "import os\n"))
    assert rejected[0]["reject_reason"] == "no_statements"
    assert "pylint_score" not in rejected[0]
    assert len(kept) + len(rejected) == 2


def test_early_stop_changes_no_decision(pool: LintPool) -> None:
    texts = [
        GOOD,
        "import os\nimport sys\nx=1\n",
        "def f():\n  return undefined\n",
        "# c\n# c\n# c\nx = 1\n",
        "class A:\n    pass\n",
        SLOW[:2000],
    ]
    fast_kept, fast_rej, _ = run_filter(pool, records(*texts))
    exact_kept, exact_rej, _ = run_filter(pool, records(*texts), exact_scores=True)
    assert [r["id"] for r in fast_kept] == [r["id"] for r in exact_kept]
    assert all("pylint_score" in r or r["reject_reason"] != "low_pylint_score" for r in exact_rej)
    for fast, exact in zip(fast_rej, exact_rej, strict=True):
        assert fast["reject_reason"] == exact["reject_reason"]
        if "pylint_score_max" in fast:
            assert exact["pylint_score"] <= fast["pylint_score_max"]


def test_a_sample_shadowing_a_stdlib_module_does_not_poison_later_ones() -> None:
    linter = SampleLinter()
    user = "from random import randint\n\nprint(randint(1, 6))\n"
    before = linter.lint(user)
    linter.lint("def choice():\n    return 4\n\n\nseed = 1\n")  # looks like a fake `random`
    after = linter.lint(user)
    fresh = SampleLinter().lint(user)
    assert before == after == fresh
    assert before.rating == 10.0


def test_config_files_in_the_working_directory_do_not_change_scores(tmp_path: Path) -> None:
    code = "import os\n\n\ndef f():\n    x = 1\n    return 2\n"
    baseline = SampleLinter().lint(code)
    (tmp_path / "pylintrc").write_text("[MESSAGES CONTROL]\ndisable=all\n")
    (tmp_path / "pyproject.toml").write_text(
        "[tool.pylint.'messages control']\ndisable = ['all']\n"
    )
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        inside = SampleLinter().lint(code)
    finally:
        os.chdir(cwd)
    assert inside == baseline
    assert baseline.rating is not None and baseline.rating < 10.0


def test_invalid_settings_name_the_field() -> None:
    with pytest.raises(ValueError, match="minScore"):
        FilterSettings(min_score=11)
    with pytest.raises(ValueError, match="timeLimitSeconds"):
        FilterSettings(time_limit=0)
