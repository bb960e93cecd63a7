"""The pipeline against a real S3 endpoint (moto's server on loopback, started by the tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from palimpsest.commit import read_committed, read_marker
from palimpsest.localrun import LocalJob
from palimpsest.plan import PlanSettings, ShardPlan, make_plan
from palimpsest.records import RecordWriter
from palimpsest.storage import S3Settings, S3Store, store_for
from tests.support.jobs import make_job, prepared, worker_command
from tests.support.s3server import S3Server

pytestmark = pytest.mark.integration

GOOD = (
    '"""Module."""\n\n\ndef double(value: int) -> int:\n'
    '    """Twice the value."""\n    return 2 * value\n\n\nprint(double(2))\n'
)
REPO = Path(__file__).resolve().parents[2]


def store(server: S3Server) -> S3Store:
    return S3Store(S3Settings(endpoint_url=server.endpoint))


def put_input(server: S3Server, bucket: str, n: int = 40) -> None:
    lines = []
    for i in range(n):
        text = GOOD if i % 3 else "def broken(:\n"
        lines.append(json.dumps({"id": f"r{i}", "text": text, "keep_me": i}))
    body = ("\n".join(lines) + "\n").encode()
    client = boto3.client("s3", endpoint_url=server.endpoint)
    client.put_object(Bucket=bucket, Key="in/part-0.jsonl", Body=body)
    client.put_object(Bucket=bucket, Key="in/part-1.jsonl", Body=body.replace(b'"r', b'"s'))


def test_read_write_every_format_on_s3(s3_server: S3Server, s3_bucket: str) -> None:
    s3 = store(s3_server)
    for name in ("a.jsonl", "a.jsonl.gz", "a.jsonl.zst", "a.parquet"):
        uri = f"s3://{s3_bucket}/fmt/{name}"
        writer = RecordWriter(s3, uri)
        for i in range(300):
            writer.write({"id": i, "text": f"x = {i}"})
        writer.close()
        plan = make_plan(s3, uri, PlanSettings(records_per_shard=1000))
        assert [raw.record["id"] for s in plan.shards for raw in s.read(s3) if raw.record] == list(
            range(300)
        )


def test_byte_range_shards_cover_s3_objects_exactly_once(
    s3_server: S3Server, s3_bucket: str
) -> None:
    put_input(s3_server, s3_bucket, n=200)
    s3 = store(s3_server)
    plan = make_plan(s3, f"s3://{s3_bucket}/in/", PlanSettings(records_per_shard=17))
    assert any(p.start > 0 for s in plan.shards for p in s.pieces)
    ids = [raw.record["id"] for s in plan.shards for raw in s.read(s3) if raw.record]
    assert len(ids) == 400 == len(set(ids))


def filter_job(server: S3Server, bucket: str, out: str, per_shard: int) -> LocalJob:
    """The filter job over s3://bucket/in/, planned and documented as the operator does."""
    job = make_job(f"s3://{bucket}/in/", out, records_per_shard=per_shard, endpoint=server.endpoint)
    return prepared(job)


def worker_call(server: S3Server, local: LocalJob, index: int) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of a filter worker pod for one shard."""
    cmd = worker_command(local, ("filter",), "--workers", "1")
    return cmd, {**os.environ, **server.env(), "JOB_COMPLETION_INDEX": str(index)}


def run_worker(server: S3Server, local: LocalJob, index: int) -> dict[str, object]:
    cmd, env = worker_call(server, local, index)
    done = subprocess.run(
        cmd, env=env, capture_output=True, text=True, cwd=REPO, check=False, timeout=300
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)["shards"][str(index)]
    return result


def test_worker_commits_each_shard_once_and_reruns_are_no_ops(
    s3_server: S3Server, s3_bucket: str
) -> None:
    put_input(s3_server, s3_bucket, n=30)
    s3 = store(s3_server)
    local = filter_job(s3_server, s3_bucket, f"s3://{s3_bucket}/out", per_shard=20)
    for index in range(len(local.plan.shards)):
        assert run_worker(s3_server, local, index)["committed"] is True
        assert run_worker(s3_server, local, index)["already_done"] is True
    stage_uri = local.refs[0].uri(local.job.output_uri)
    kept, rejected = [], []
    for index in range(len(local.plan.shards)):
        marker = read_marker(s3, stage_uri, index)
        assert marker is not None
        kept += [r.record for r in read_committed(s3, marker) if r.record]
        rejected += [r.record for r in read_committed(s3, marker, "rejects") if r.record]
    assert len(kept) + len(rejected) == 60
    assert {r["reject_reason"] for r in rejected} == {"syntax_error"}
    assert all(r["pylint_score"] == 10.0 and "keep_me" in r for r in kept)


def test_two_attempts_racing_on_one_shard_commit_exactly_once(
    s3_server: S3Server, s3_bucket: str
) -> None:
    put_input(s3_server, s3_bucket, n=30)
    s3 = store(s3_server)
    local = filter_job(s3_server, s3_bucket, f"s3://{s3_bucket}/race", per_shard=100)
    cmd, env = worker_call(s3_server, local, 0)
    procs = [
        subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [json.loads(p.communicate(timeout=300)[0])["shards"]["0"] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(r["committed"] for r in results) in ([False, True], [False, False])
    stage_uri = local.refs[0].uri(local.job.output_uri)
    marker = read_marker(s3, stage_uri, 0)
    assert marker is not None
    listed = {o.uri for o in s3.list(f"{stage_uri}/")} - {f"{stage_uri}/_markers/shard-000000.json"}
    assert listed == {p.uri for parts in marker.parts.values() for p in parts}
    total = sum(1 for kind in ("output", "rejects") for r in read_committed(s3, marker, kind))
    assert total == 60  # two input objects of 30 records


def test_conditional_put_is_honoured_by_the_endpoint(s3_server: S3Server, s3_bucket: str) -> None:
    s3 = store_for(f"s3://{s3_bucket}/x", S3Settings(endpoint_url=s3_server.endpoint))
    assert s3.put_bytes(f"s3://{s3_bucket}/m.json", b"1", if_absent=True)
    assert not s3.put_bytes(f"s3://{s3_bucket}/m.json", b"2", if_absent=True)
    assert s3.read_bytes(f"s3://{s3_bucket}/m.json") == b"1"


def test_a_missing_object_reads_as_none_in_one_request(s3_server: S3Server, s3_bucket: str) -> None:
    """How markers are read: one GET, whose 404 means "not committed", not a HEAD then a GET."""
    s3 = store_for(f"s3://{s3_bucket}/x", S3Settings(endpoint_url=s3_server.endpoint))
    assert isinstance(s3, S3Store)
    sent: list[str] = []
    s3._client.meta.events.register("before-call.s3", lambda model, **_: sent.append(model.name))
    assert s3.read_if_exists(f"s3://{s3_bucket}/absent.json") is None
    s3.put_bytes(f"s3://{s3_bucket}/present.json", b"{}")
    assert s3.read_if_exists(f"s3://{s3_bucket}/present.json") == b"{}"
    assert sent == ["GetObject", "PutObject", "GetObject"]


def test_plan_cli_writes_a_plan_to_s3(s3_server: S3Server, s3_bucket: str) -> None:
    put_input(s3_server, s3_bucket, n=50)
    env = {**os.environ, **s3_server.env()}
    plan_uri = f"s3://{s3_bucket}/plans/cli.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "palimpsest.cli",
            "plan",
            f"s3://{s3_bucket}/in/",
            "--records-per-shard",
            "25",
            "--out",
            plan_uri,
        ],
        env=env,
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    summary = json.loads(done.stdout)
    plan = ShardPlan.from_json(store(s3_server).read_bytes(plan_uri))
    assert summary["plan_id"] == plan.plan_id and summary["shards"] == len(plan.shards) >= 4
