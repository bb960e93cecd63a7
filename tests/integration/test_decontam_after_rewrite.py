"""A RewriteJob whose rewrite reproduces a benchmark solution: `[sgcr, scor, decontam]` with
`rewrite.minModelScore`, run by `palimpsest run` through the OpenAI-compatible engine and the
scripted server (a model that follows the prompts, except for the records scripted here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from palimpsest.cli import main
from palimpsest.commit import REJECTS_KIND, read_committed, read_marker
from palimpsest.document import read_document
from palimpsest.names import JOBS_DIR
from palimpsest.stages.decontam import humaneval_items
from palimpsest.storage import LocalStore
from tests.integration.test_rewrite_openai import code, model_like, sgcr_text
from tests.support.invariant import check_invariant
from tests.support.jobs import manifest
from tests.support.openai_server import Reply, ScriptedOpenAIServer

pytestmark = pytest.mark.integration

RECORDS = 6


def test_a_memorised_solution_is_caught_after_the_rewrite(tmp_path: Path) -> None:
    scripted = ScriptedOpenAIServer()
    scripted.default = model_like()
    with scripted.run() as server:
        run_job(server, tmp_path)
    store = LocalStore()
    out = str(tmp_path / "out")
    document = read_document(store, str(next((tmp_path / "out" / JOBS_DIR).glob("job-*.json"))))
    refs = document.stage_refs()
    shards = len(list((tmp_path / "out" / refs[0].stage_id / "_markers").glob("*.json")))
    check_invariant(store, out, refs, shards, [f"r{i}" for i in range(RECORDS)])
    rejects = {}
    for ref in refs:
        for shard in range(shards):
            marker = read_marker(store, ref.uri(out), shard)
            assert marker is not None
            for raw in read_committed(store, marker, REJECTS_KIND):
                assert raw.record is not None
                rejects[raw.record["id"]] = (ref.kind, raw.record["reject_reason"], raw.record)
    assert {k: v[:2] for k, v in rejects.items()} == {
        "r2": ("decontam", "contaminated"),
        "r3": ("sgcr", "low_model_score"),
    }
    assert rejects["r2"][2]["contamination"]["task_id"] == "HumanEval/0"
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| 5 | 4 | 1 | contaminated 1 |" in card and "| 6 | 5 | 1 | low_model_score 1 |" in card


def run_job(server: ScriptedOpenAIServer, tmp_path: Path) -> None:
    """The job over six records: r2's SGCR answer is HumanEval/0, r3's scores itself 3."""
    task = humaneval_items()[0]
    server.script(code(2), Reply(sgcr_text(task.texts[0] + task.texts[1])))
    server.script(code(3), Reply(sgcr_text(code(3), score=3)))
    rows = [{"id": f"r{i}", "text": code(i)} for i in range(RECORDS)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    job = manifest(
        stages=["sgcr", "scor", "decontam"],
        input={"uri": str(tmp_path / "in.jsonl")},
        output={"uri": str(tmp_path / "out")},
        sharding={"recordsPerShard": 2},
        rewrite={
            "engine": {"type": "openai", "model": "scripted", "baseURL": server.base_url},
            "minModelScore": 5,
        },
    )
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    assert main(["run", str(tmp_path / "job.yaml"), "--no-progress"]) == 0
