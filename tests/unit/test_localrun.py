"""Local mode's pure parts: job file loading, overrides, limits, stage groups, ids, dry runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from palimpsest.cli import main
from palimpsest.document import read_document
from palimpsest.localrun import LocalOptions, LocalRunError, load_job, prepare, resolve_uri
from palimpsest.stagerun import llm_plans
from palimpsest.storage import LocalStore
from tests.support.jobs import write_job_file


def write_job(tmp_path: Path, spec: dict[str, Any]) -> Path:
    return write_job_file(tmp_path / "job.yaml", spec, "unit")


def code_spec(**extra: Any) -> dict[str, Any]:
    return {
        "recipe": "swallowcode",
        "input": {"uri": "in.jsonl"},
        "output": {"uri": "out"},
        "sharding": {"recordsPerShard": 2},
        "rewrite": {"engine": {"type": "vllm", "model": "org/model"}},
        **extra,
    }


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    lines = [json.dumps({"id": f"r{i}", "text": f"x = {i}\n"}) for i in range(5)]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_relative_paths_are_taken_from_the_cwd(workdir: Path) -> None:
    job = load_job(write_job(workdir, code_spec()), LocalOptions())
    assert job.input.uri == str(workdir / "in.jsonl")
    assert job.output_uri == str(workdir / "out")
    assert resolve_uri("s3://b/k") == "s3://b/k"
    assert resolve_uri("/abs/x") == "/abs/x"


def test_options_replace_model_and_output(workdir: Path) -> None:
    options = LocalOptions(model="/models/local", output="elsewhere")
    job = load_job(write_job(workdir, code_spec()), options)
    assert job.engine.model == "/models/local"
    assert job.output_uri == str(workdir / "elsewhere")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"recipe": "poetry"}, "spec.recipe"),
        ({"output": {"uri": "in.jsonl"}}, "spec.output.uri"),
        ({"rewrite": {"engine": {"type": "vllm"}}}, "model"),
    ],
)
def test_bad_specs_name_the_field(workdir: Path, change: dict[str, Any], message: str) -> None:
    with pytest.raises(LocalRunError, match=message):
        load_job(write_job(workdir, {**code_spec(), **change}), LocalOptions())


def test_not_a_rewrite_job(workdir: Path) -> None:
    path = workdir / "job.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Pod", "spec": {}}))
    with pytest.raises(LocalRunError, match="RewriteJob"):
        load_job(path, LocalOptions())


def test_unknown_stage_subset(workdir: Path) -> None:
    with pytest.raises(LocalRunError, match="--stages"):
        load_job(write_job(workdir, code_spec()), LocalOptions(stages=("math",)))


def test_ids_match_the_rewrite_worker_and_limit_changes_them(workdir: Path) -> None:
    job = load_job(write_job(workdir, code_spec()), LocalOptions())
    full = prepare(job, LocalOptions())
    assert [r.kind for r in full.refs] == ["filter", "sgcr", "scor"]
    assert len(full.plan.shards) == 3
    group = list(full.refs[1:])
    assert [p.ref for p in llm_plans(full.document, ("sgcr", "scor"))] == group
    assert list((workdir / "out" / "_plans").glob(f"plan-{full.plan.plan_id}.json"))
    (written,) = (workdir / "out" / "_jobs").iterdir()
    assert read_document(LocalStore(), str(written)).stage_refs() == full.refs

    limited = prepare(job, LocalOptions(limit=3))
    again = prepare(job, LocalOptions(limit=3))
    assert limited.plan.plan_id == again.plan.plan_id  # the copy is written once
    assert limited.plan.plan_id != full.plan.plan_id
    assert {r.stage_id for r in limited.refs}.isdisjoint(r.stage_id for r in full.refs)
    copy = Path(limited.plan.input_uri).read_text().splitlines()
    assert [json.loads(line)["id"] for line in copy] == ["r0", "r1", "r2"]


def test_dry_run_plans_and_runs_nothing(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_job(workdir, code_spec(dryRun=True))
    assert main(["run", str(path), "--no-progress"]) == 0
    assert "nothing run (spec.dryRun)" in capsys.readouterr().out
    assert sorted(p.name for p in (workdir / "out").iterdir()) == ["_jobs", "_plans"]


def test_missing_job_file_exits_4(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(workdir / "missing.yaml")]) == 4
    assert "missing.yaml: cannot read the job file" in capsys.readouterr().err
