"""`palimpsest run JOB.yaml` end to end on local files.

A filter-only job and a full SwallowCode job (OpenAI engine against the scripted server) run
in this process; a SwallowMath job runs on the real vLLM CPU engine and the tiny model in the
vLLM env. Each checks that the summary equals the sums of the markers, that a re-run does no
work (no new requests, same markers), and that the report is written next to the outputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from palimpsest.cli import main
from palimpsest.commit import marker_uri, read_marker
from palimpsest.localrun import LocalOptions, load_job
from palimpsest.stats import Stats
from palimpsest.storage import LocalStore, S3Settings, S3Store
from tests.support.jobs import write_job_file
from tests.support.openai_server import Reply, ScriptedOpenAIServer
from tests.support.s3server import S3Server
from tests.vllm import env

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
STORE = LocalStore()
GOOD = 6  # records that pass the filter (pylint 10.0)


def good_code(i: int) -> str:
    return (
        f'"""Helpers for scaling value number {i}."""\n\n\n'
        f"def scale_value_{i}(scale: int) -> int:\n"
        f'    """Return the value {i} scaled by the given factor."""\n'
        f"    return scale * {i} + {i * 7}\n"
    )


def write_code_input(path: Path) -> None:
    records = [{"id": f"g{i}", "text": good_code(i)} for i in range(GOOD)]
    records.insert(2, {"id": "bad", "text": "def broken(:\n    pass\n"})
    records.append({"id": "low", "text": "import os,sys\nx=1\ndef f(a,b):\n  return a\n"})
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def write_job(path: Path, spec: dict[str, Any], name: str = "local") -> Path:
    return write_job_file(path, spec, name)


def stage_sums(output: Path, stage_id: str) -> Stats:
    total = Stats()
    shard = 0
    while STORE.exists(marker_uri(str(output / stage_id), shard)):
        body = json.loads(STORE.read_bytes(marker_uri(str(output / stage_id), shard)))
        total.merge(Stats.from_dict(body["stats"]))
        shard += 1
    return total


def check_summary_equals_markers(output: Path) -> dict[str, Any]:
    summary = json.loads((output / "summary.json").read_text())
    for stage in summary["stages"].values():
        sums = stage_sums(output, stage["stage_id"])
        assert stage["committed"] == stage["shards"]
        assert stage["records"] == sums.to_dict()["records"]
        assert stage["rejects"] == sums.to_dict()["rejects"]
        assert stage["tokens"] == sums.to_dict()["tokens"]
    return dict(summary)


def marker_files(output: Path) -> dict[str, bytes]:
    """Every file of the stages (markers, parts, plans), not the summary and report."""
    return {
        str(p.relative_to(output)): p.read_bytes()
        for p in output.rglob("*")
        if p.is_file() and p.name not in ("summary.json", "report.html")
    }


def test_filter_only_job_with_relative_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    write_code_input(tmp_path / "in.jsonl")
    job = write_job(
        tmp_path / "job.yaml",
        {
            "recipe": "swallowcode",
            "stages": ["filter"],
            "input": {"uri": "in.jsonl"},
            "output": {"uri": "out"},
            "sharding": {"recordsPerShard": 3},
        },
    )
    assert main(["run", str(job), "--workers", "1", "--no-progress"]) == 0
    output = tmp_path / "out"
    summary = check_summary_equals_markers(output)
    flt = summary["stages"]["filter"]
    assert flt["shards"] >= 2
    assert flt["records"] == {"in": GOOD + 2, "kept": GOOD, "rejected": 2}
    assert flt["rejects"] == {"low_pylint_score": 1, "syntax_error": 1}
    page = (output / "report.html").read_text()
    assert "Threshold: 7 " in page and "data:image/png;base64," in page
    printed = capsys.readouterr().out
    assert "syntax_error 1" in printed and f"kept {GOOD:>6}" in printed
    assert list((output / "_plans").glob("plan-*.json"))

    before = marker_files(output)
    assert before
    assert main(["run", str(job), "--workers", "1", "--no-progress"]) == 0
    assert marker_files(output) == before  # nothing re-ran
    assert check_summary_equals_markers(output) == summary


def test_progress_in_a_log_is_json_lines_not_bars(tmp_path: Path) -> None:
    """stderr is a pipe here, as in a pod or a CI log: no bar redraws, one JSON line per
    interval (every record with a zero interval) and one at the end."""
    write_code_input(tmp_path / "in.jsonl")
    spec = {"recipe": "swallowcode", "stages": ["filter"], "input": {"uri": "in.jsonl"}}
    job = write_job(tmp_path / "job.yaml", {**spec, "output": {"uri": "out"}})
    result = subprocess.run(
        [sys.executable, "-m", "palimpsest.cli", "run", str(job), "--workers", "1"],
        cwd=tmp_path,
        env={**os.environ, "PALIMPSEST_PROGRESS_SECONDS": "0"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr
    lines = [json.loads(t) for t in result.stderr.splitlines() if t.startswith('{"progress"')]
    assert [line["records"] for line in lines] == [*range(1, GOOD + 3), GOOD + 2]
    assert all(line["progress"] == "filter" and line["total"] == GOOD + 2 for line in lines)
    assert lines[-1]["eta_seconds"] == 0


def test_filter_job_on_s3(s3_server: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    store = S3Store(S3Settings(endpoint_url=s3_server.endpoint))
    write_code_input(tmp_path / "in.jsonl")
    store.put_bytes(f"s3://{s3_bucket}/in/code.jsonl", (tmp_path / "in.jsonl").read_bytes())
    output = f"s3://{s3_bucket}/out"
    job = write_job(
        tmp_path / "job.yaml",
        {
            "recipe": "swallowcode",
            "stages": ["filter"],
            "input": {"uri": f"s3://{s3_bucket}/in/"},
            "output": {"uri": output},
            "storage": {"endpoint": s3_server.endpoint},
            "sharding": {"recordsPerShard": 4},
        },
    )
    assert main(["run", str(job), "--workers", "1", "--no-progress"]) == 0
    summary = json.loads(store.read_bytes(f"{output}/summary.json"))
    stage = summary["stages"]["filter"]
    total = Stats()
    for shard in range(stage["shards"]):
        marker = read_marker(store, f"{output}/{stage['stage_id']}", shard)
        assert marker is not None
        total.merge(marker.stats)
    assert stage["records"] == total.to_dict()["records"]
    assert stage["records"] == {"in": GOOD + 2, "kept": GOOD, "rejected": 2}
    assert b"Threshold: 7 " in store.read_bytes(f"{output}/report.html")
    before = {o.uri: o.etag for o in store.list(output) if "/_markers/" in o.uri}
    assert main(["run", str(job), "--workers", "1", "--no-progress"]) == 0
    assert {o.uri: o.etag for o in store.list(output) if "/_markers/" in o.uri} == before


def code_model(body: dict[str, Any]) -> Reply:
    """Answers like a model following the SGCR and SCOR prompts."""
    messages = body["messages"]
    last = str(messages[-1]["content"])
    if "reviewer" in str(messages[0]["content"]):
        answer = f"Score: 6\n\nSuggestions:\n- fine\n\nImproved code:\n```python\n{last}# r\n```\n"
        return Reply(answer, prompt_tokens=30 + len(last) // 10, completion_tokens=20)
    return Reply(f"```python\n{last}# o\n```", prompt_tokens=25, completion_tokens=15)


def code_job_spec(input_path: Path, output: Path, base_url: str) -> dict[str, Any]:
    """SwallowCode over `input_path`, 4 records a shard, on the OpenAI-compatible server."""
    return {
        "recipe": "swallowcode",
        "input": {"uri": str(input_path)},
        "output": {"uri": str(output)},
        "sharding": {"recordsPerShard": 4},
        "rewrite": {
            "engine": {"type": "openai", "model": "scripted", "baseURL": base_url},
            "sampling": {"maxTokens": 256},
        },
    }


@pytest.fixture()
def server() -> Iterator[ScriptedOpenAIServer]:
    scripted = ScriptedOpenAIServer()
    scripted.default = code_model
    with scripted.run() as running:
        yield running


def test_full_job_on_the_openai_engine(server: ScriptedOpenAIServer, tmp_path: Path) -> None:
    write_code_input(tmp_path / "in.jsonl")
    spec = code_job_spec(tmp_path / "in.jsonl", tmp_path / "elsewhere", server.base_url)
    job = write_job(tmp_path / "job.yaml", spec)
    output = tmp_path / "out"
    argv = ["run", str(job), "--output", str(output), "--workers", "1", "--no-progress"]
    assert main(argv) == 0
    summary = check_summary_equals_markers(output)
    stages = summary["stages"]
    assert stages["filter"]["records"]["kept"] == GOOD
    assert stages["sgcr"]["records"] == {"in": GOOD, "kept": GOOD, "rejected": 0}
    assert stages["scor"]["records"] == {"in": GOOD, "kept": GOOD, "rejected": 0}
    assert stages["scor"]["tokens"] == {"prompt": 25 * GOOD, "generated": 15 * GOOD}
    assert len(server.received) == 2 * GOOD
    page = (output / "report.html").read_text()
    # scores; sgcr and scor token lengths and length scatters
    assert page.count("data:image/png;base64,") == 5
    assert page.count('class="sample"') == 8  # 4 before/after samples per rewrite stage
    assert not (tmp_path / "elsewhere").exists()

    before = marker_files(output)
    assert main(argv) == 0
    assert len(server.received) == 2 * GOOD  # no new requests
    assert marker_files(output) == before


def test_model_that_cannot_load_says_how_to_point_at_a_local_one(
    vllm_python: Path, tmp_path: Path
) -> None:
    (tmp_path / "in.jsonl").write_text('{"id": "m", "text": "1 + 1 = 2"}\n')
    job = write_job(
        tmp_path / "job.yaml",
        {
            "recipe": "swallowmath",
            "input": {"uri": str(tmp_path / "in.jsonl")},
            "output": {"uri": str(tmp_path / "out")},
            "rewrite": {"engine": {"type": "vllm", "model": "no-such/model"}},
        },
    )
    proc = subprocess.run(
        [str(vllm_python), "-m", "palimpsest.cli", "run", str(job), "--no-progress"],
        capture_output=True,
        text=True,
        env=env.subprocess_env(),  # offline: the hub name cannot be fetched
        timeout=300,
    )
    assert proc.returncode == 3, proc.stderr[-4000:]
    assert "could not load the model 'no-such/model'" in proc.stderr
    assert "--model PATH" in proc.stderr


def test_math_example_on_vllm_then_report_in_this_env(
    vllm_python: Path, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)  # the example's relative paths are taken from the cwd
    output = tmp_path / "out"
    argv = [
        "run",
        "examples/quickstart-math.yaml",
        "--model",
        str(tiny_model),
        "--output",
        str(output),
        "--limit",
        "6",
        "--no-progress",
    ]
    proc = subprocess.run(
        [str(vllm_python), "-m", "palimpsest.cli", *argv],
        capture_output=True,
        text=True,
        env=env.subprocess_env(),
        cwd=REPO,
        timeout=480,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = check_summary_equals_markers(output)
    math = summary["stages"]["math"]
    assert math["shards"] == 2
    assert math["records"]["in"] == 6
    assert math["tokens"]["prompt"] > 0 and math["tokens"]["generated"] > 0
    assert "math" in proc.stdout

    before = marker_files(output)
    assert main(argv) == 0  # this env has no vLLM: only a run that starts nothing passes
    assert marker_files(output) == before
    page = (output / "report.html").read_text()
    assert "Token lengths: math" in page and "data:image/png;base64," in page


@pytest.mark.parametrize("name", ["quickstart.yaml", "quickstart-math.yaml"])
def test_example_jobs_are_valid(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    path = REPO / "examples" / name
    job = load_job(path, LocalOptions())
    assert Path(job.input.uri).is_file()
    assert job.output_uri == str(REPO / "out" / job.name)
    assert job.rewrite is not None and job.rewrite.engine.sampling.max_tokens <= 512
    crd = yaml.safe_load(
        (REPO / "manifests" / "crd" / "rewritejobs.palimpsest.dev.yaml").read_text()
    )
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec = yaml.safe_load(path.read_text())["spec"]
    assert set(schema["required"]) <= set(spec)
    engine_schema = schema["properties"]["rewrite"]["properties"]["engine"]
    assert set(engine_schema["required"]) <= set(spec["rewrite"]["engine"])
    assert set(spec) <= set(schema["properties"])


def test_make_quickstart_offline(vllm_python: Path, tmp_path: Path) -> None:
    """The README's quickstart command as it runs offline: no MODEL, so the tiny model is
    generated into out/tiny-model and the output says its text is noise."""
    output = tmp_path / "quickstart"
    proc = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "quickstart",
            f"QUICKSTART_OUTPUT={output}",
            "QUICKSTART_LIMIT=6",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env.subprocess_env(),
        timeout=540,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "tiny random model (out/tiny-model) whose text is noise" in proc.stdout
    assert "make quickstart MODEL=Qwen/Qwen2.5-Coder-0.5B-Instruct" in proc.stdout
    assert (REPO / "out" / "tiny-model" / "config.json").is_file()
    summary = check_summary_equals_markers(output)
    stages = summary["stages"]
    assert stages["filter"]["records"]["in"] == 6
    assert stages["sgcr"]["records"]["in"] == stages["filter"]["records"]["kept"]
    assert proc.stdout.count("RewriteJob quickstart (swallowcode)") == 1  # one summary, at the end
    page = (output / "report.html").read_text()
    assert "Threshold: 7 " in page and page.count("data:image/png;base64,") >= 2
