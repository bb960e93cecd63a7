"""The local run's report, built from synthetic markers: sums, reasons, plots and threshold."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from palimpsest.commit import ShardOutput
from palimpsest.identity import StageRef
from palimpsest.report import (
    collect,
    render_html,
    summary_json,
    summary_rows,
    summary_text,
    top_reasons,
)
from palimpsest.stats import Stats
from palimpsest.storage import LocalStore

STORE = LocalStore()
FILTER = StageRef("filter", "filter-aaa", None)
SGCR = StageRef("sgcr", "sgcr-bbb", "filter-aaa")


def commit_filter(output: str, shard: int, scores: list[float], reasons: list[str]) -> None:
    out = ShardOutput(STORE, FILTER.uri(output), FILTER.stage_id, shard)
    stats = Stats(seconds=2.0)
    for i, score in enumerate(scores):
        stats.add_score(score)
        if score >= 7.0:
            stats.keep()
            out.write({"id": f"{shard}-{i}", "pylint_score": score})
        else:
            stats.reject("low_pylint_score")
            out.write_reject({"id": f"{shard}-{i}", "reject_reason": "low_pylint_score"})
    for reason in reasons:
        stats.reject(reason)
        out.write_reject({"id": "x", "reject_reason": reason})
    assert out.commit(stats)


def commit_sgcr(output: str, shard: int, tokens: list[tuple[int, int]]) -> None:
    out = ShardOutput(STORE, SGCR.uri(output), SGCR.stage_id, shard)
    stats = Stats(seconds=4.0)
    for i, (prompt, generated) in enumerate(tokens):
        meta = {"rewrite": {"sgcr": {"prompt_tokens": prompt, "generated_tokens": generated}}}
        stats.requests += 1
        stats.prompt_tokens += prompt
        stats.generated_tokens += generated
        stats.keep()
        out.write({"id": f"{shard}-{i}", "text": "x", **meta})
    stats.reject("prompt_too_long")
    out.write_reject({"id": "long", "rewrite": {"sgcr": {"prompt_tokens": 0}}})
    assert out.commit(stats)


@pytest.fixture()
def output(tmp_path: Path) -> str:
    out = str(tmp_path / "out")
    commit_filter(out, 0, [9.5, 8.0, 3.2], ["syntax_error", "syntax_error"])
    commit_filter(out, 1, [7.0, 6.9], ["empty_text"])
    commit_sgcr(out, 0, [(100, 50), (300, 120)])
    commit_sgcr(out, 1, [(200, 80)])
    return out


def test_sums_come_from_the_markers(output: str) -> None:
    data = collect(
        STORE, output, [FILTER, SGCR], 3, job_name="j", recipe="swallowcode", min_score=7.0
    )
    rows = {row["stage"]: row for row in summary_rows(data)}
    assert rows["filter"]["shards"] == "2/3"
    assert (rows["filter"]["in"], rows["filter"]["kept"], rows["filter"]["rejected"]) == (8, 3, 5)
    assert rows["filter"]["top_rejects"] == [
        ("low_pylint_score", 2),
        ("syntax_error", 2),
        ("empty_text", 1),
    ]
    assert rows["filter"]["records_per_s"] == 2.0  # 8 records in 4 s
    assert (rows["sgcr"]["prompt_tokens"], rows["sgcr"]["generated_tokens"]) == (600, 250)
    assert rows["sgcr"]["generated_tokens_per_s"] == 31.2  # 250 tokens in 8 s
    assert data.scores == Counter({"9.5": 1, "8.0": 1, "3.0": 1, "7.0": 1, "6.5": 1})
    lengths = data.token_lengths[0]
    assert sorted(lengths.prompt) == [100, 200, 300]  # the unserved reject is left out
    assert sorted(lengths.generated) == [50, 80, 120]
    body = summary_json(data)
    assert body["stages"]["sgcr"]["records"] == {"in": 5, "kept": 3, "rejected": 2}
    text = summary_text(data)
    assert "kept      3" in text and "low_pylint_score 2" in text


def test_html_is_self_contained_with_plots_and_threshold(output: str) -> None:
    pytest.importorskip("matplotlib")
    data = collect(
        STORE, output, [FILTER, SGCR], 2, job_name="j", recipe="swallowcode", min_score=7.0
    )
    page = render_html(data)
    # scores, sgcr token lengths and sgcr length before/after
    assert page.count('src="data:image/png;base64,') == 3
    assert 'alt="sgcr length before and after"' in page
    assert "Threshold: 7 " in page
    assert "<td>8</td><td>3</td><td>5</td>" in page
    assert "http" not in page  # nothing fetched from elsewhere


def test_top_reasons_sums_the_rest() -> None:
    stats = Stats()
    for i, reason in enumerate("abcdefg"):
        for _ in range(10 - i):
            stats.reject(reason)
    assert top_reasons(stats, 2) == [("a", 10), ("b", 9), ("other", 8 + 7 + 6 + 5 + 4)]


def test_no_plots_without_filter_or_tokens(tmp_path: Path) -> None:
    data = collect(
        STORE, str(tmp_path), [SGCR], 1, job_name="j", recipe="swallowmath", min_score=None
    )
    page = render_html(data)
    assert "data:image/png" not in page
    assert json.dumps(summary_json(data))
