"""Exactly-once under faults real S3 produces, through a fault-injecting proxy in front of moto.

The filter and rewrite workers run as processes pointed at the proxy. After every case the
invariant holds: every part a marker lists exists, and every input id ends exactly once in the
last stage's output or some stage's rejects.
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

from palimpsest.engines.settings import EngineSettings
from palimpsest.localrun import LocalJob
from palimpsest.storage import S3Settings, S3Store
from tests.support.invariant import InvariantError, check_invariant
from tests.support.jobs import make_job, prepared, worker_command
from tests.support.openai_server import Reply, ScriptedOpenAIServer
from tests.support.s3faults import Fault, FaultProxy, fault_proxy
from tests.support.s3server import S3Server

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RECORDS = 12
PER_SHARD = 4


def text(i: int) -> str:
    if i % 3 == 0:
        return f"def broken_{i}(:\n"  # a syntax_error reject, no linting
    return (
        f'"""Module {i}."""\n\n\ndef value_{i}(x: int) -> int:\n'
        f'    """Scale."""\n    return x * {i}\n'
    )


@pytest.fixture()
def proxy(s3_server: S3Server) -> Iterator[FaultProxy]:
    with fault_proxy(s3_server.endpoint) as running:
        yield running


def write_input(s3_server: S3Server, bucket: str) -> str:
    store = S3Store(S3Settings(endpoint_url=s3_server.endpoint))
    lines = "".join(json.dumps({"id": f"r{i:02d}", "text": text(i)}) + "\n" for i in range(RECORDS))
    store.put_bytes(f"s3://{bucket}/in/data.jsonl", lines.encode())
    return f"s3://{bucket}/in/"


def run_worker(
    local: LocalJob, stages: tuple[str, ...], env: dict[str, str], timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    argv = worker_command(local, stages, "--index", "0", "--shards-per-index", "99")
    if stages == ("filter",):
        argv += ["--workers", "1"]
    return subprocess.run(argv, capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout)


def check(local: LocalJob, s3_server: S3Server) -> None:
    store = S3Store(S3Settings(endpoint_url=s3_server.endpoint))
    check_invariant(
        store,
        local.job.output_uri,
        local.refs,
        len(local.plan.shards),
        [f"r{i:02d}" for i in range(RECORDS)],
    )


def filter_job(s3_server: S3Server, bucket: str, proxy: FaultProxy) -> LocalJob:
    job = make_job(
        write_input(s3_server, bucket),
        f"s3://{bucket}/out",
        ("filter",),
        records_per_shard=PER_SHARD,
        endpoint=proxy.endpoint,
    )
    local = prepared(job)
    assert len(local.plan.shards) == RECORDS // PER_SHARD
    return local


# (HTTP method, path fragment, action, times): faults on the commit of shard 1.
COMMIT_FAULTS = {
    "marker-response-lost": ("PUT", "_markers/shard-000001", "lose_response", 1),
    "marker-500-after-commit": ("PUT", "_markers/shard-000001", "error_after_commit", 1),
    "marker-409-conflict": ("PUT", "_markers/shard-000001", "conflict", 2),
    "part-response-lost": ("PUT", "output/shard-000002", "lose_response", 1),
    "input-reset-mid-get": ("GET", "/in/data.jsonl", "reset_mid_body", 1),
}


@pytest.mark.parametrize("case", sorted(COMMIT_FAULTS))
def test_filter_worker_commits_exactly_once_under_a_fault(
    s3_server: S3Server, s3_bucket: str, proxy: FaultProxy, case: str
) -> None:
    local = filter_job(s3_server, s3_bucket, proxy)
    method, path, action, times = COMMIT_FAULTS[case]
    proxy.add(Fault(method, path, action, times))
    env = {**os.environ, **s3_server.env()}
    first = run_worker(local, ("filter",), env)
    assert proxy.applied(action) == times, case
    if first.returncode != 0:  # a loud failure is allowed; the retry must then finish the job
        assert first.returncode == 1, first.stderr[-3000:]
        again = run_worker(local, ("filter",), env)
        assert again.returncode == 0, again.stderr[-3000:]
    check(local, s3_server)
    print(f"{case}: first attempt exit {first.returncode}; invariant holds", file=sys.stderr)


def test_an_endpoint_that_ignores_if_none_match_is_refused(
    s3_server: S3Server, s3_bucket: str, proxy: FaultProxy
) -> None:
    local = filter_job(s3_server, s3_bucket, proxy)
    proxy.add(Fault("PUT", "", "drop_if_none_match", None))
    result = run_worker(local, ("filter",), {**os.environ, **s3_server.env()})
    assert result.returncode == 3, result.stderr[-3000:]
    assert "ignores If-None-Match" in result.stderr
    assert local.job.output_uri in result.stderr
    with pytest.raises(InvariantError, match="no marker"):
        check(local, s3_server)  # nothing was committed


def test_a_blackholed_request_fails_over_within_the_read_timeout(
    s3_server: S3Server, s3_bucket: str, proxy: FaultProxy
) -> None:
    local = filter_job(s3_server, s3_bucket, proxy)
    proxy.add(Fault("GET", "/in/data.jsonl", "blackhole", 1))
    started = time.monotonic()
    result = run_worker(local, ("filter",), {**os.environ, **s3_server.env()})
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-3000:]
    assert proxy.applied("blackhole") == 1
    check(local, s3_server)
    assert seconds < 60, seconds
    print(f"blackholed GET: the shard committed after {seconds:.1f} s", file=sys.stderr)


def model(delay: float) -> Any:
    def reply(body: dict[str, Any]) -> Reply:
        time.sleep(delay)
        last = str(body["messages"][-1]["content"])
        if "reviewer" in str(body["messages"][0]["content"]):
            answer = f"Score: 7\n\nSuggestions:\n- fine\n\nImproved code:\n```python\n{last}\n```\n"
        else:
            answer = f"```python\n{last}\n# optimised\n```"
        return Reply(answer, prompt_tokens=10, completion_tokens=5)

    return reply


def rewrite_job(
    s3_server: S3Server, bucket: str, endpoint: str, server: ScriptedOpenAIServer
) -> LocalJob:
    engine = EngineSettings(
        type="openai", model="scripted", base_url=server.base_url, max_in_flight=2
    )
    job = make_job(
        write_input(s3_server, bucket),
        f"s3://{bucket}/out",
        ("sgcr", "scor"),
        records_per_shard=PER_SHARD,
        endpoint=endpoint,
        engine=engine,
    )
    return prepared(job)


def rewrite_command(local: LocalJob, checkpoint_records: int) -> list[str]:
    """Both rewrite stages over every shard in one attempt, checkpointing every few records."""
    return worker_command(
        local,
        ("sgcr", "scor"),
        "--index",
        "0",
        "--shards-per-index",
        "99",
        "--checkpoint-records",
        str(checkpoint_records),
    )


REWRITE_FAULTS = {
    "checkpoint-response-lost": ("PUT", "_checkpoints/shard-000000", "lose_response", 2),
    "scor-marker-response-lost": ("PUT", "_markers/shard-000001", "lose_response", 2),
    "checkpoint-409": ("PUT", "_checkpoints/shard-000002", "conflict", 1),
}


@pytest.mark.parametrize("case", sorted(REWRITE_FAULTS))
def test_rewrite_worker_commits_exactly_once_under_a_fault(
    s3_server: S3Server, s3_bucket: str, proxy: FaultProxy, case: str
) -> None:
    scripted = ScriptedOpenAIServer()
    scripted.default = model(0.0)
    with scripted.run() as server:
        local = rewrite_job(s3_server, s3_bucket, proxy.endpoint, server)
        method, path, action, times = REWRITE_FAULTS[case]
        proxy.add(Fault(method, path, action, times))
        argv = rewrite_command(local, checkpoint_records=2)
        env = {**os.environ, **s3_server.env()}
        result = subprocess.run(
            argv, capture_output=True, text=True, cwd=REPO, env=env, timeout=240
        )
        assert proxy.applied(action) >= 1, case
        if result.returncode != 0:
            assert result.returncode == 1, result.stderr[-3000:]
            again = subprocess.run(
                argv, capture_output=True, text=True, cwd=REPO, env=env, timeout=240
            )
            assert again.returncode == 0, again.stderr[-3000:]
    check(local, s3_server)
    print(f"{case}: first attempt exit {result.returncode}; invariant holds", file=sys.stderr)


def test_a_zombie_attempt_that_wakes_after_the_commit_loses_nothing(
    s3_server: S3Server, s3_bucket: str
) -> None:
    """SIGSTOP an attempt right after its first checkpoint, let a second attempt of the same
    index adopt that checkpoint and commit, then SIGCONT the first: it loses the commit, and
    every part the winner's markers list is still there."""
    scripted = ScriptedOpenAIServer()
    scripted.default = model(0.05)
    with scripted.run() as server:
        local = rewrite_job(s3_server, s3_bucket, s3_server.endpoint, server)
        argv = rewrite_command(local, checkpoint_records=1)
        env = {**os.environ, **s3_server.env()}
        zombie = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, env=env
        )
        store = S3Store(S3Settings(endpoint_url=s3_server.endpoint))
        scor_uri = local.refs[-1].uri(local.job.output_uri)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if store.list(f"{scor_uri}/_checkpoints/"):
                break
            time.sleep(0.02)
        zombie.send_signal(signal.SIGSTOP)
        try:
            second = subprocess.run(
                argv, capture_output=True, text=True, cwd=REPO, env=env, timeout=240
            )
            assert second.returncode == 0, second.stderr[-3000:]
        finally:
            zombie.send_signal(signal.SIGCONT)
        _, stderr = zombie.communicate(timeout=240)
    assert zombie.returncode in (0, 1), stderr.decode()[-3000:]
    check(local, s3_server)
    print(f"zombie: exit {zombie.returncode} after waking; invariant holds", file=sys.stderr)
