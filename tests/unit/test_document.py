"""The job document: it round-trips, refuses a foreign one, and the args and env of the Jobs
the operator builds give the worker back the very job and stage ids the operator computed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from palimpsest.cli import build_parser
from palimpsest.commands import worker
from palimpsest.document import DocumentError, JobDocument, job_prompts, read_document
from palimpsest.job import parse_job
from palimpsest.names import INDEX_ENV
from palimpsest.plan import make_plan
from palimpsest.storage import LocalStore, join
from palimpsest_operator.evictions import give_up_uri
from palimpsest_operator.inputs import ensure_document
from palimpsest_operator.jobs import Owner, ShardList, StageJob, stage_job
from palimpsest_operator.placement import parse_placement

STORE = LocalStore()


def write_input(folder: Path, records: int = 10) -> None:
    folder.mkdir()
    lines = [json.dumps({"id": f"r{i}", "text": f"x = {i}\n"}) for i in range(records)]
    (folder / "part.jsonl").write_text("\n".join(lines) + "\n")


def manifest(tmp: Path, **rewrite: Any) -> dict[str, Any]:
    return {
        "apiVersion": "palimpsest.dev/v1alpha1",
        "kind": "RewriteJob",
        "metadata": {"name": "demo", "namespace": "team", "uid": "u1"},
        "spec": {
            "recipe": "swallowcode",
            "input": {"uri": str(tmp / "in"), "idField": "id"},
            "output": {"uri": str(tmp / "out")},
            "sharding": {"recordsPerShard": 2},
            "filter": {"minScore": 6.5, "resources": {"cpu": "2"}},
            "rewrite": {
                "engine": {"type": "openai", "model": "m", "baseURL": "http://llm:8000/v1"},
                "sampling": {"temperature": 0.5, "maxTokens": 64},
                "shardsPerPod": 2,
                **rewrite,
            },
        },
    }


def operator_document(tmp: Path) -> tuple[dict[str, Any], JobDocument, str, int]:
    body = manifest(tmp)
    job = parse_job(body)
    plan = make_plan(STORE, job.input.uri, job.sharding)
    plan_uri = join(job.output_uri, "_plans", f"plan-{plan.plan_id}.json")
    STORE.put_bytes(plan_uri, plan.to_json())
    status_plan = {"id": plan.plan_id, "uri": plan_uri}
    document, uri = ensure_document(job, status_plan, job_prompts(job), STORE, None)
    return body, document, uri, len(plan.shards)


def test_a_document_round_trips(tmp_path: Path) -> None:
    write_input(tmp_path / "in")
    _, document, uri, _ = operator_document(tmp_path)
    again = read_document(STORE, uri)
    assert again == document
    assert again.stage_refs() == document.stage_refs()
    assert again.uri() == uri, "content-addressed: the same job gives the same name"


def test_speculative_decoding_travels_in_the_document() -> None:
    body = manifest(Path("/data"))
    body["spec"]["rewrite"]["engine"] = {
        "type": "vllm",
        "model": "m",
        "speculative": {"method": "ngram", "numSpeculativeTokens": 3},
    }
    job = parse_job(body)
    document = JobDocument(job, "p1", "/data/out/_plans/p1.json", job_prompts(job))
    again = JobDocument.from_json(document.to_json(), "doc")
    assert again.job.engine.speculative == job.engine.speculative
    assert again.job.engine.speculative is not None
    assert again.job.engine.speculative.num_speculative_tokens == 3


def test_a_document_whose_ids_this_program_would_not_compute_is_refused(tmp_path: Path) -> None:
    write_input(tmp_path / "in")
    uri = operator_document(tmp_path)[2]
    body = json.loads(Path(uri).read_bytes())
    body["stageIds"]["scor"] = "scor-000000000000"
    Path(uri).write_text(json.dumps(body))
    with pytest.raises(DocumentError, match="differs from the one that wrote the job"):
        read_document(STORE, uri)
    with pytest.raises(DocumentError, match="cannot read"):
        read_document(STORE, str(tmp_path / "nothing.json"))


def container_of(manifest: dict[str, Any]) -> dict[str, Any]:
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    return dict(container)


def run_worker_args(
    container: dict[str, Any], index: int, monkeypatch: pytest.MonkeyPatch
) -> worker.Assignment:
    """What the worker makes of exactly the command, args and env the Job gives its pod."""
    for item in container["env"]:
        if "value" in item:
            monkeypatch.setenv(item["name"], item["value"])
    monkeypatch.setenv(INDEX_ENV, str(index))
    assert container["command"] == ["palimpsest"]
    args = build_parser().parse_args(container["args"])
    assert args.command == "worker"
    return worker.assignment(args)


def test_the_operator_s_jobs_give_the_worker_the_operator_s_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_input(tmp_path / "in")
    body, document, uri, shards = operator_document(tmp_path)
    placement = parse_placement(body)
    owner = Owner("demo", "team", "u1")
    refs = document.stage_refs()
    filter_job = stage_job(StageJob(document.job, placement, owner, uri, refs[:1], shards))
    rewrite_job = stage_job(StageJob(document.job, placement, owner, uri, refs[1:], shards))
    assert shards == 5

    got = run_worker_args(container_of(filter_job), 3, monkeypatch)
    assert got.document.job == document.job
    assert got.document.stage_refs() == refs
    assert (got.stages, got.shards) == (("filter",), (3,))

    got = run_worker_args(container_of(rewrite_job), 2, monkeypatch)
    assert got.document.stage_refs() == refs
    assert (got.stages, got.shards) == (("sgcr", "scor"), (4,)), "2 shards per pod, 5 shards"
    assert rewrite_job["spec"]["completions"] == 3
    spelled = " ".join(container_of(rewrite_job)["args"])
    for setting in ("6.5", "0.5", "http://llm", "openai"):
        assert setting not in spelled, f"{setting!r}: the spec travels in the document only"


def test_a_worker_given_another_group_exits_as_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_input(tmp_path / "in")
    _, _, uri, _ = operator_document(tmp_path)
    monkeypatch.setenv(INDEX_ENV, "0")
    args = build_parser().parse_args(["worker", "--job", uri, "--stages", "sgcr"])
    assert worker.run(args) == 3
    error = capsys.readouterr().err
    assert "--stages sgcr: not a stage group of the job (filter | sgcr,scor)" in error
    args = build_parser().parse_args(["worker", "--job", uri, "--stages", "filter", "--index", "9"])
    assert worker.run(args) == 3


def test_a_worker_of_a_given_up_index_exits_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_input(tmp_path / "in")
    body, document, uri, shards = operator_document(tmp_path)
    owner = Owner("demo", "team", "u1")
    refs = document.stage_refs()
    job = stage_job(StageJob(document.job, parse_placement(body), owner, uri, refs[:1], shards))
    STORE.put_bytes(give_up_uri(document.job.output_uri, job["metadata"]["name"], 1), b"{}")
    assert run_worker_args(container_of(job), 2, monkeypatch).shards == (2,)
    with pytest.raises(ValueError, match="index 1: given up"):
        run_worker_args(container_of(job), 1, monkeypatch)
    args = build_parser().parse_args(container_of(job)["args"])
    assert worker.run(args) == 3
    assert "given up" in capsys.readouterr().err


def test_a_retry_job_s_indexes_run_the_shards_of_its_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_input(tmp_path / "in")
    body, document, uri, shards = operator_document(tmp_path)
    owner = Owner("demo", "team", "u1")
    refs = document.stage_refs()
    listed = join(document.job.output_uri, "_retries", "retry.json")
    STORE.put_bytes(listed, json.dumps([1, 3, 4]).encode())
    only = ShardList(listed, (1, 3, 4))
    placement = parse_placement(body)
    filter_job = stage_job(StageJob(document.job, placement, owner, uri, refs[:1], shards, 1, only))
    assert filter_job["spec"]["completions"] == 3
    got = [run_worker_args(container_of(filter_job), i, monkeypatch).shards for i in range(3)]
    assert got == [(1,), (3,), (4,)]
    rewrite_job = stage_job(
        StageJob(document.job, placement, owner, uri, refs[1:], shards, 1, only)
    )
    assert rewrite_job["spec"]["completions"] == 2, "2 shards per pod over 3 listed shards"
    got = [run_worker_args(container_of(rewrite_job), i, monkeypatch).shards for i in range(2)]
    assert got == [(1, 3), (4,)]
