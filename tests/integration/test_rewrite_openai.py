"""The rewrite stages end to end through the OpenAI-compatible engine and a scripted server.

The scripted server answers like a model that follows the prompts (SGCR: score, suggestions,
a python block; SCOR: a python block), except for the records a test scripts otherwise, so
parsing, rejects, token accounting, commits and resume are checked on exact expectations.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from palimpsest.cli import main
from palimpsest.commit import REJECTS_KIND, read_committed, read_marker
from palimpsest.engines.settings import EngineSettings
from palimpsest.job import Job
from palimpsest.localrun import LocalJob
from palimpsest.records import read_all_jsonl
from palimpsest.rewrite.checkpoint import load_checkpoints, resume
from palimpsest.storage import LocalStore, S3Settings, S3Store, store_for
from tests.support.jobs import make_job, prepared, worker_command
from tests.support.openai_server import Reply, ScriptedOpenAIServer
from tests.support.s3server import S3Server

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SGCR_TOKENS = (30, 20)  # (prompt, completion) usage the server reports for an SGCR answer
SCOR_TOKENS = (25, 15)


def code(i: int) -> str:
    return f"def value_{i}(scale: int) -> int:\n    return scale * {i} + {i * 7}\n"


def sgcr_text(body: str, score: int = 6) -> str:
    return (
        f"Score: {score}\n\nSuggestions:\n- add a docstring\n\nImproved code:\n"
        f"```python\n{body}# reviewed\n```\n"
    )


def scor_text(body: str) -> str:
    return f"```python\n{body}# optimised\n```"


def model_like(delay: float = 0.0) -> Any:
    """A default reply that follows whichever prompt it is given."""

    def reply(body: dict[str, Any]) -> Reply:
        messages = body["messages"]
        last = str(messages[-1]["content"])
        if "reviewer" in str(messages[0]["content"]):
            return Reply(
                sgcr_text(last),
                prompt_tokens=SGCR_TOKENS[0],
                completion_tokens=SGCR_TOKENS[1],
                delay=delay,
            )
        return Reply(
            scor_text(last),
            prompt_tokens=SCOR_TOKENS[0],
            completion_tokens=SCOR_TOKENS[1],
            delay=delay,
        )

    return reply


@pytest.fixture()
def server() -> Iterator[ScriptedOpenAIServer]:
    scripted = ScriptedOpenAIServer()
    scripted.default = model_like()
    with scripted.run() as running:
        yield running


def write_input(path: Path, records: list[dict[str, Any]], bad_lines: int = 0) -> None:
    lines = [json.dumps(r) for r in records] + ["{not json"] * bad_lines
    path.write_text("\n".join(lines) + "\n")


def engine_flags(server: ScriptedOpenAIServer, *extra: str) -> list[str]:
    return ["--engine", "openai", "--model", "scripted", "--base-url", server.base_url, *extra]


def test_swallowcode_rejects_and_token_totals(server: ScriptedOpenAIServer, tmp_path: Path) -> None:
    records = [{"id": f"r{i}", "text": code(i), "origin": "stack"} for i in range(8)]
    records.append({"id": "no-text", "body": "x"})
    write_input(tmp_path / "in.jsonl", records, bad_lines=1)
    server.script(code(1), Reply.context_too_long())
    server.script(
        code(2),
        Reply(sgcr_text(code(2)), finish_reason="length", prompt_tokens=30, completion_tokens=64),
    )
    server.script(
        code(3),
        Reply("Score: 3\nSuggestions: rewrite it all.", prompt_tokens=30, completion_tokens=9),
    )
    server.script(
        code(4),
        Reply(
            sgcr_text("def broken(:\n    return 'long enough to count'\n"),
            prompt_tokens=30,
            completion_tokens=20,
        ),
    )
    server.script(
        code(5) + "# reviewed\n",
        Reply("```python\nx = 1\n```", prompt_tokens=25, completion_tokens=5),
    )
    out, rej, stats_path = tmp_path / "out.jsonl", tmp_path / "rej.jsonl", tmp_path / "s.json"
    argv = [
        "rewrite",
        str(tmp_path / "in.jsonl"),
        str(out),
        "--recipe",
        "swallowcode",
        "--rejects",
        str(rej),
        "--stats",
        str(stats_path),
        *engine_flags(server),
    ]
    assert main(argv) == 0

    kept = read_all_jsonl(out.read_bytes())
    rejects = read_all_jsonl(rej.read_bytes())
    assert sorted(r["id"] for r in kept) == ["r0", "r6", "r7"]
    first = next(r for r in kept if r["id"] == "r0")
    assert first["text"] == code(0) + "# reviewed\n# optimised\n"
    assert first["origin"] == "stack"
    assert first["rewrite"]["sgcr"]["score"] == 6
    assert first["rewrite"]["sgcr"]["prompt_tokens"] == SGCR_TOKENS[0]
    assert first["rewrite"]["scor"]["generated_tokens"] == SCOR_TOKENS[1]
    reasons = {str(r.get("id")): (r["reject_stage"], r["reject_reason"]) for r in rejects}
    assert reasons["r1"] == ("sgcr", "prompt_too_long")
    assert reasons["r2"] == ("sgcr", "truncated")
    assert reasons["r3"] == ("sgcr", "no_code_block")
    assert reasons["r4"] == ("sgcr", "rewrite_syntax_error")
    assert reasons["r5"] == ("scor", "too_short")
    assert reasons["no-text"] == ("sgcr", "missing_text")
    assert sum(1 for r in rejects if r["reject_reason"] == "invalid_json") == 1
    assert len(kept) + len(rejects) == len(records) + 1  # every item exactly once

    stats = json.loads(stats_path.read_text())
    sgcr, scor = stats["stages"]["sgcr"], stats["stages"]["scor"]
    # Engine-reported usage: 6 SGCR answers served normally (r0, r4..r7 default-like, r3)
    # plus the truncated one; the prompt_too_long request was not served.
    assert sgcr["tokens"] == {"prompt": 7 * 30, "generated": 5 * 20 + 64 + 9}
    assert sgcr["requests"] == 8
    assert scor["tokens"] == {"prompt": 4 * 25, "generated": 3 * 15 + 5}
    assert scor["records"] == {"in": 4, "kept": 3, "rejected": 1}
    assert server.served() == 8 + 4
    assert stats["total"]["tokens"]["prompt"] == sgcr["tokens"]["prompt"] + scor["tokens"]["prompt"]


def openai_engine(server: ScriptedOpenAIServer, **settings: Any) -> EngineSettings:
    return EngineSettings(type="openai", model="scripted", base_url=server.base_url, **settings)


def code_job(
    input_uri: str,
    output: str,
    server: ScriptedOpenAIServer,
    per_shard: int,
    stages: tuple[str, ...] = ("sgcr", "scor"),
    **settings: Any,
) -> Job:
    return make_job(
        input_uri,
        output,
        stages,
        records_per_shard=per_shard,
        engine=openai_engine(server, **settings),
    )


def local_input(tmp_path: Path, records: int) -> str:
    (tmp_path / "in").mkdir()
    write_input(
        tmp_path / "in" / "data.jsonl",
        [{"id": f"r{i:03d}", "text": code(i)} for i in range(records)],
    )
    return str(tmp_path / "in")


def stage_uris(local: LocalJob) -> dict[str, str]:
    return {ref.kind: ref.uri(local.job.output_uri) for ref in local.refs}


def test_kill_and_resume(tmp_path: Path) -> None:
    total = 24
    output = str(tmp_path / "out")
    scripted = ScriptedOpenAIServer()
    scripted.default = model_like(delay=0.15)
    with scripted.run() as server:
        job = code_job(local_input(tmp_path, total), output, server, 12, max_in_flight=2)
        local = prepared(job)
        argv = worker_command(
            local,
            ("sgcr", "scor"),
            "--index",
            "0",
            "--shards-per-index",
            "2",
            "--checkpoint-records",
            "2",
        )
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=REPO,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            # About half-way: 5 SCOR chunks of 2 records (of 24) checkpointed.
            cps = list(Path(output).glob("scor-*/_checkpoints/*/*.json"))
            if len(cps) >= 5:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        first_run = server.served()
        store = LocalStore()
        uris = stage_uris(local)
        saved = {
            kind: sum(len(resume(load_checkpoints(store, uris[kind], s)).done) for s in (0, 1))
            for kind in ("sgcr", "scor")
        }
        assert 0 < saved["scor"] <= saved["sgcr"] < total
        assert first_run < 2 * total

        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        second_run = server.served() - first_run
        # Only what no checkpoint held was generated again: every record needs one SGCR and
        # one SCOR request (the model-like server keeps all of them).
        assert second_run == (total - saved["sgcr"]) + (total - saved["scor"])

        ids: list[str] = []
        for kind in ("sgcr", "scor"):
            ids = []
            for shard in (0, 1):
                marker = read_marker(store, uris[kind], shard)
                assert marker is not None
                ids += [str(r.record["id"]) for r in read_committed(store, marker) if r.record]
                ids += [
                    str(r.record["id"])
                    for r in read_committed(store, marker, REJECTS_KIND)
                    if r.record
                ]
            assert sorted(ids) == [f"r{i:03d}" for i in range(total)], kind

        again = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
        )
        assert again.returncode == 0
        assert server.served() - first_run == second_run  # committed shards: no requests
    print(
        f"resume: first run {first_run} requests, checkpointed {saved}, "
        f"second run {second_run} requests",
        file=sys.stderr,
    )


def test_worker_block_on_s3(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path, server: ScriptedOpenAIServer
) -> None:
    store = S3Store(S3Settings(endpoint_url=s3_server.endpoint))
    lines = "\n".join(json.dumps({"id": f"m{i}", "text": code(i)}) for i in range(9)) + "\n"
    store.put_bytes(f"s3://{s3_bucket}/in/a.jsonl", lines.encode())
    output = f"s3://{s3_bucket}/out"
    job = make_job(
        f"s3://{s3_bucket}/in/",
        output,
        ("sgcr", "scor"),
        records_per_shard=3,
        endpoint=s3_server.endpoint,
        engine=openai_engine(server),
    )
    local = prepared(job)
    plan = local.plan
    assert len(plan.shards) >= 2
    env = {**os.environ, "JOB_COMPLETION_INDEX": "0", **s3_server.env()}
    argv = worker_command(
        local,
        ("sgcr", "scor"),
        "--shards-per-index",
        str(len(plan.shards)),
        "--checkpoint-records",
        "1",
    )
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s3 = store_for(output, S3Settings(endpoint_url=s3_server.endpoint))
    total_tokens = 0
    for ref in local.refs:
        for shard in range(len(plan.shards)):
            marker = read_marker(s3, ref.uri(output), shard)
            assert marker is not None, (ref.kind, shard)
            total_tokens += marker.stats.prompt_tokens + marker.stats.generated_tokens
            # Chunks of one record were checkpointed as they finished; the marker holds them.
            checkpoints = load_checkpoints(s3, ref.uri(output), shard)
            assert checkpoints
            chunk_parts = {p.uri for c in checkpoints for p in c.parts.get("output", [])}
            assert chunk_parts <= {p.uri for p in marker.parts["output"]}
            assert sum(p.records for p in marker.parts["output"]) == marker.stats.kept
    assert total_tokens == 9 * (sum(SGCR_TOKENS) + sum(SCOR_TOKENS))

    bad = subprocess.run(
        [*argv, "--index", "99"], capture_output=True, text=True, cwd=REPO, env=env, timeout=60
    )
    assert bad.returncode == 3


def test_instruct_translate_then_n_responses(server: ScriptedOpenAIServer, tmp_path: Path) -> None:
    instructions = ["Explain recursion.", "Write a haiku about rain.", "List three prime numbers."]
    write_input(
        tmp_path / "in.jsonl", [{"id": f"q{i}", "text": t} for i, t in enumerate(instructions)]
    )

    def reply(body: dict[str, Any]) -> Reply:
        last = str(body["messages"][-1]["content"])
        if "Translate the following request" in last:
            source = last.rsplit("\n", 1)[-1]
            return Reply(f"[ja] {source}", prompt_tokens=15, completion_tokens=6)
        n = int(body.get("n") or 1)
        texts = [f"Answer {k} to {last}" for k in range(n)]
        if last == "[ja] Write a haiku about rain.":
            return Reply(texts, finish_reason="length", prompt_tokens=9, completion_tokens=40)
        return Reply(texts, prompt_tokens=9, completion_tokens=8 * n)

    server.default = reply
    out, rej, stats_path = tmp_path / "out.jsonl", tmp_path / "rej.jsonl", tmp_path / "s.json"
    argv = [
        "rewrite",
        str(tmp_path / "in.jsonl"),
        str(out),
        "--recipe",
        "instruct",
        "--stages",
        "translate,response",
        "--language",
        "Japanese",
        "--n",
        "2",
        "--rejects",
        str(rej),
        "--stats",
        str(stats_path),
        *engine_flags(server),
    ]
    assert main(argv) == 0
    kept = {r["id"]: r for r in read_all_jsonl(out.read_bytes())}
    assert sorted(kept) == ["q0", "q2"]
    assert kept["q0"]["text"] == "[ja] Explain recursion."
    assert kept["q0"]["responses"] == [
        "Answer 0 to [ja] Explain recursion.",
        "Answer 1 to [ja] Explain recursion.",
    ]
    assert kept["q0"]["rewrite"]["translate"]["original"] == "Explain recursion."
    (rejected,) = read_all_jsonl(rej.read_bytes())
    assert (rejected["id"], rejected["reject_reason"]) == ("q1", "truncated")
    stats = json.loads(stats_path.read_text())["stages"]
    assert stats["translate"]["tokens"] == {"prompt": 3 * 15, "generated": 3 * 6}
    # n = 2: the prompt counts once per request, every completion counts.
    assert stats["response"]["tokens"] == {"prompt": 3 * 9, "generated": 2 * 16 + 40}
    bodies = [r.body for r in server.received if "Translate" not in r.key]
    assert all(b.get("n") == 2 for b in bodies)
    assert all(r.body.get("n") == 1 for r in server.received if "Translate" in r.key)


def test_worker_reads_a_committed_filter_stage(
    server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    good = (
        '"""Totals."""\n\n\ndef total(values: list[int]) -> int:\n'
        '    """Sum."""\n    return sum(values)\n'
    )
    (tmp_path / "in").mkdir()
    write_input(
        tmp_path / "in" / "a.jsonl",
        [{"id": "ok", "text": good}, {"id": "bad", "text": "def broken(:\n"}],
    )
    output = str(tmp_path / "out")
    local = prepared(code_job(str(tmp_path / "in"), output, server, 10, ("filter", "sgcr", "scor")))
    rewrite = worker_command(local, ("sgcr", "scor"), "--index", "0")
    early = subprocess.run(rewrite, capture_output=True, text=True, cwd=REPO, timeout=60)
    assert early.returncode == 1  # the filter has not committed yet: retry later
    assert server.served() == 0

    filtered = subprocess.run(
        worker_command(local, ("filter",), "--index", "0", "--workers", "1"),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert filtered.returncode == 0, filtered.stderr[-3000:]
    proc = subprocess.run(rewrite, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    store = LocalStore()
    for ref in local.refs[1:]:  # the ids the operator computes for the whole chain
        marker = read_marker(store, ref.uri(output), 0)
        assert marker is not None, ref.kind
        assert marker.stats.records_in == 1  # only the record the filter kept
    assert server.served() == 2

    wrong_group = subprocess.run(
        worker_command(local, ("scor",), "--index", "0"),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert wrong_group.returncode == 3  # not a stage group of the job
    assert "not a stage group" in wrong_group.stderr


def test_local_rewrite_with_work_dir_reruns_for_free(
    server: ScriptedOpenAIServer, tmp_path: Path
) -> None:
    write_input(tmp_path / "in.jsonl", [{"id": f"r{i}", "text": code(i)} for i in range(4)])
    out = tmp_path / "out.jsonl.gz"
    argv = [
        "rewrite",
        str(tmp_path / "in.jsonl"),
        str(out),
        "--recipe",
        "swallowcode",
        "--work-dir",
        str(tmp_path / "work"),
        *engine_flags(server),
    ]
    assert main(argv) == 0
    served = server.served()
    first = read_all_jsonl(out.read_bytes(), str(out))
    assert len(first) == 4 and served == 8
    assert (tmp_path / "out.rejects.jsonl.gz").exists()
    assert main(argv) == 0
    assert server.served() == served  # every stage committed in the work folder
    assert read_all_jsonl(out.read_bytes(), str(out)) == first
