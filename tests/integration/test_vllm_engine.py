"""The engines on a real vLLM (the CPU build) and a tiny random model.

The in-process engine runs in the vLLM env's Python (`tests.vllm.engine_probe`), loading the
model from a real S3 endpoint the way rewrite pods do; the OpenAI-compatible engine runs here,
against `vllm serve` started on a free loopback port. The model's text is noise, so these tests
check counts, budgets, finish reasons and failure handling, not content.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from palimpsest.engines import (
    PROMPT_TOO_LONG,
    EngineSettings,
    GenerationRequest,
    GenerationResult,
    SamplingSettings,
    make_engine,
)
from palimpsest.engines.model_source import COMPLETE_MARKER, download_s3_prefix
from tests.support import s3server
from tests.vllm import engine_probe, env

# The first test here may build the vLLM env (minutes, once per machine) in its setup.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

MODEL_BUCKET = "palimpsest-models"
SERVE_START_TIMEOUT = 300.0


def run_in_vllm_env(python: Path, *args: str, timeout: float = 600, **extra: str) -> Any:
    """Run `python -m tests.vllm.engine_probe ARGS` there; its last stdout line is JSON."""
    proc = subprocess.run(
        [str(python), "-m", "tests.vllm.engine_probe", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env.subprocess_env(**extra),
        cwd=env.REPO,
    )
    assert proc.returncode == 0, f"engine probe failed:\n{proc.stderr[-5000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def upload_dir(directory: Path, bucket: str, prefix: str) -> None:
    client = boto3.client("s3", region_name=s3server.REGION)
    client.create_bucket(Bucket=bucket)
    for path in sorted(directory.iterdir()):
        client.upload_file(str(path), bucket, f"{prefix}/{path.name}")


@pytest.fixture(scope="module")
def model_url(s3_server: s3server.S3Server, tiny_model: Path) -> str:
    """The tiny model, uploaded to the test S3 server."""
    upload_dir(tiny_model, MODEL_BUCKET, "tiny")
    return f"s3://{MODEL_BUCKET}/tiny"


@pytest.fixture(scope="module")
def probe(
    vllm_python: Path,
    tiny_model: Path,
    tiny_model_no_system: Path,
    model_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    """One run of the in-process engine over every scenario."""
    cache = tmp_path_factory.mktemp("model-cache")
    started = time.monotonic()
    report: dict[str, Any] = run_in_vllm_env(
        vllm_python,
        str(tiny_model),
        "--model",
        model_url,
        "--no-system-model",
        str(tiny_model_no_system),
        PALIMPSEST_MODEL_CACHE=str(cache),
    )
    report["probe_seconds"] = time.monotonic() - started
    report["cache"] = str(cache)
    print(
        f"vLLM engine start {report['load_seconds']:.1f} s, probe {report['probe_seconds']:.1f} s, "
        f"burst {report['burst']['generated_tokens']} tokens in {report['burst']['seconds']:.2f} s"
    )
    return report


def test_engine_loads_an_s3_model_into_the_local_cache(probe: dict[str, Any]) -> None:
    cached = list(Path(probe["cache"]).iterdir())
    assert len(cached) == 1
    assert (cached[0] / COMPLETE_MARKER).exists()
    assert (cached[0] / "model.safetensors").exists()


def test_concurrent_requests_report_the_templates_token_counts(probe: dict[str, Any]) -> None:
    results = probe["concurrent"]
    assert [r["request_id"] for r in results] == [f"r{i}" for i in range(len(results))]
    assert all(r["error"] is None for r in results)
    assert [r["prompt_tokens"] for r in results] == probe["expected_prompt_tokens"]


def test_generation_stops_at_max_tokens_with_finish_reason_length(probe: dict[str, Any]) -> None:
    completions = [c for r in probe["concurrent"] for c in r["completions"]]
    assert len(completions) == len(engine_probe.TEXTS)
    for c in completions:
        assert c["finish_reason"] in ("stop", "length")
        assert 1 <= c["generated_tokens"] <= engine_probe.MAX_TOKENS
        if c["finish_reason"] == "length":
            assert c["generated_tokens"] == engine_probe.MAX_TOKENS
    assert any(c["finish_reason"] == "length" for c in completions)


def test_prompt_over_the_budget_is_rejected_without_crashing(probe: dict[str, Any]) -> None:
    assert probe["prompt_budget"] == engine_probe.MAX_MODEL_LEN - engine_probe.MAX_TOKENS
    assert probe["too_long_template_tokens"] > probe["prompt_budget"]
    assert probe["too_long"]["error"] == PROMPT_TOO_LONG
    assert probe["too_long"]["completions"] == []
    after = probe["after_too_long"]
    assert after["error"] is None
    # Same request and seed as before: the engine is unharmed and sampling is reproducible.
    assert after == probe["concurrent"][0]


def test_n_completions_count_the_prompt_once(probe: dict[str, Any]) -> None:
    n2 = probe["n2"]
    assert n2["error"] is None
    assert len(n2["completions"]) == 2
    assert n2["prompt_tokens"] == probe["expected_prompt_tokens"][0]


def test_a_reset_prefix_cache_makes_the_same_prompt_find_nothing_cached(
    probe: dict[str, Any],
) -> None:
    check = probe["prefix_cache"]
    assert check["hits_again"] > 0  # the same prompt again finds its prefix cached
    assert check["reset"] is True
    assert check["hits_after_reset"] == 0


def test_engine_reports_itself(probe: dict[str, Any]) -> None:
    assert probe["gpus"] == 0  # the CPU build holds no GPU
    assert probe["vllm_version"] == env.pinned_vllm_version()
    assert probe["tool_problems"] == []  # the env the workers check their pins against
    assert probe["engine_seconds"] >= probe["load_seconds"] > 0
    assert probe["engine_seconds_after_close"] >= probe["engine_seconds"]
    assert probe["burst"]["generated_tokens"] > 0


def test_system_role_is_folded_for_templates_that_reject_it(probe: dict[str, Any]) -> None:
    fold = probe["fold"]
    assert fold["template_rejects_system"]
    assert fold["folded_flag"]
    assert len(fold["ids"]) == fold["expected"]
    assert fold["again"] == fold["ids"]


def test_a_killed_engine_raises_engine_dead_error(probe: dict[str, Any]) -> None:
    dead = probe["dead"]
    assert dead["killed"] >= 1
    assert dead["outcome"] == "EngineDeadError"


def test_s3_model_is_downloaded_once(
    s3_server: s3server.S3Server, tiny_model: Path, tmp_path: Path
) -> None:
    upload_dir(tiny_model, "download-once", "models/tiny")
    first = download_s3_prefix("s3://download-once/models/tiny/", tmp_path)
    assert sorted(p.name for p in first.iterdir()) == sorted(
        [COMPLETE_MARKER, *(p.name for p in tiny_model.iterdir())]
    )
    assert (first / "config.json").read_bytes() == (tiny_model / "config.json").read_bytes()
    client = boto3.client("s3", region_name=s3server.REGION)
    for path in tiny_model.iterdir():
        client.delete_object(Bucket="download-once", Key=f"models/tiny/{path.name}")
    assert download_s3_prefix("s3://download-once/models/tiny", tmp_path) == first
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no leftover staging dirs
    with pytest.raises(FileNotFoundError, match="no objects"):
        download_s3_prefix("s3://download-once/models/other", tmp_path)


# --- vllm serve + the OpenAI-compatible engine ---------------------------------------------


@pytest.fixture(scope="module")
def vllm_server(
    vllm_python: Path, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """`vllm serve` on the tiny model, on a free loopback port; yields its /v1 URL."""
    port = s3server.free_port()
    log_path = tmp_path_factory.mktemp("vllm-serve") / "serve.log"
    command = [
        *(str(vllm_python), "-m", "tests.vllm.serve"),  # `vllm serve`, see that module
        str(tiny_model),
        *("--host", "127.0.0.1", "--port", str(port), "--served-model-name", "tiny"),
        *("--max-model-len", str(engine_probe.MAX_MODEL_LEN), "--dtype", "float32"),
        *("--max-num-seqs", "8", *env.CPU_SERVE_ARGS),
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env.subprocess_env(),
            start_new_session=True,
            cwd=env.REPO,
        )
    try:
        started = time.monotonic()
        wait_healthy(f"http://127.0.0.1:{port}/health", proc, log_path)
        print(f"vllm serve healthy after {time.monotonic() - started:.1f} s")
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop_group(proc)


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + SERVE_START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-5000:]
            raise RuntimeError(f"vllm serve exited with {proc.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"vllm serve not healthy after {SERVE_START_TIMEOUT} s")


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop the server and the engine processes it started (its own process group)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def expected_counts(vllm_python: Path, tiny_model: Path) -> dict[str, Any]:
    counts: dict[str, Any] = run_in_vllm_env(
        vllm_python, str(tiny_model), "--count-only", timeout=120
    )
    return counts


def serve_settings(base_url: str, **overrides: Any) -> EngineSettings:
    values: dict[str, Any] = {
        "type": "openai",
        "model": "tiny",
        "base_url": base_url,
        "sampling": SamplingSettings(max_tokens=engine_probe.MAX_TOKENS, seed=7),
        "max_in_flight": 4,
        "request_timeout": 60.0,
        "max_attempts": 2,
        "backoff_initial": 0.1,
        "backoff_max": 0.5,
    }
    values.update(overrides)
    return EngineSettings(**values)


def serve_generate(
    settings: EngineSettings, *requests: GenerationRequest
) -> list[GenerationResult]:
    async def scenario() -> list[GenerationResult]:
        async with make_engine(settings) as engine:
            return list(await asyncio.gather(*(engine.generate(r) for r in requests)))

    return asyncio.run(scenario())


def test_openai_engine_on_vllm_serve_counts_tokens_like_the_template(
    vllm_server: str, expected_counts: dict[str, Any]
) -> None:
    requests = [
        GenerationRequest(f"s{i}", engine_probe.messages(text))
        for i, text in enumerate(engine_probe.TEXTS)
    ]
    results = serve_generate(serve_settings(vllm_server), *requests)
    assert all(r.error is None for r in results)
    assert [r.prompt_tokens for r in results] == expected_counts["expected_prompt_tokens"]
    for r in results:
        (completion,) = r.completions
        assert completion.finish_reason in ("stop", "length")
        assert 1 <= completion.generated_tokens <= engine_probe.MAX_TOKENS
        if completion.finish_reason == "length":
            assert completion.generated_tokens == engine_probe.MAX_TOKENS


def test_openai_engine_on_vllm_serve_n_completions(
    vllm_server: str, expected_counts: dict[str, Any]
) -> None:
    request = GenerationRequest("n2", engine_probe.messages(engine_probe.TEXTS[0]), n=2)
    (result,) = serve_generate(serve_settings(vllm_server), request)
    assert len(result.completions) == 2
    assert result.prompt_tokens == expected_counts["expected_prompt_tokens"][0]
    assert 2 <= result.generated_tokens <= 2 * engine_probe.MAX_TOKENS


def test_openai_engine_on_vllm_serve_maps_context_errors(vllm_server: str) -> None:
    too_long = GenerationRequest("long", engine_probe.messages(engine_probe.LONG_TEXT))
    fine = GenerationRequest("fine", engine_probe.messages("hello"))
    long_result, fine_result = serve_generate(serve_settings(vllm_server), too_long, fine)
    assert long_result.error == PROMPT_TOO_LONG
    assert fine_result.error is None
