"""Records and objects that used to fail a whole shard on every retry, through the worker.

Each odd record ends as a counted reject (or is carried through intact) while the rest of its
shard commits; a truncated compressed object fails its shard loudly, naming the object, with
the configuration exit code (the same bytes would fail every retry).
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from palimpsest.commit import REJECTS_KIND, read_committed, read_marker
from palimpsest.localrun import LocalJob
from palimpsest.names import EXIT_CONFIG_ERROR
from palimpsest.storage import LocalStore
from tests.support.invariant import check_invariant
from tests.support.jobs import make_job, prepared, worker_command

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
GOOD = '"""Values."""\n\n\ndef double(x: int) -> int:\n    """Twice x."""\n    return 2 * x\n'


def filter_worker(input_uri: str, output: str) -> tuple[subprocess.CompletedProcess[str], LocalJob]:
    local = prepared(make_job(input_uri, output, ("filter",)))
    argv = worker_command(local, ("filter",), "--index", "0", "--shards-per-index", "9")
    result = subprocess.run(
        [*argv, "--workers", "1"], capture_output=True, text=True, cwd=REPO, timeout=240
    )
    return result, local


def test_odd_records_are_rejects_or_carried_and_the_shard_commits(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    lines = [
        json.dumps({"id": "ok", "text": GOOD}),
        '{"id": "surrogate", "text": "\\ud800 lone"}',
        json.dumps({"id": "ours", "text": GOOD, "pylint_score": "n/a"}),
        json.dumps({"id": "big-int", "text": GOOD, "n": 10**30}),
    ]
    (tmp_path / "in" / "a.jsonl").write_text("\n".join(lines) + "\n")
    pq.write_table(
        pa.table(
            {
                "id": ["ts"],
                "text": [GOOD],
                "when": [dt.datetime(2024, 5, 1, 12, 30)],
                "blob": [b"\x00\xff"],
                "price": [decimal.Decimal("12.50")],
            }
        ),
        tmp_path / "in" / "b.parquet",
    )
    result, local = filter_worker(str(tmp_path / "in"), str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-3000:]
    store = LocalStore()
    check_invariant(
        store,
        local.job.output_uri,
        local.refs,
        len(local.plan.shards),
        ["ok", "surrogate", "ours", "big-int", "ts"],
    )
    ref = local.refs[0]
    kept, rejected = {}, {}
    for shard in range(len(local.plan.shards)):
        marker = read_marker(store, ref.uri(local.job.output_uri), shard)
        assert marker is not None
        kept.update({r.record["id"]: r.record for r in read_committed(store, marker) if r.record})
        for r in read_committed(store, marker, REJECTS_KIND):
            assert r.record is not None
            rejected[r.record.get("id", json.loads(r.record.get("raw", "{}")).get("id"))] = r.record
    assert rejected["surrogate"]["reject_reason"] == "unencodable"
    assert kept["ours"]["pylint_score"] == 10.0  # the stage's own result replaces the input's
    assert kept["big-int"]["n"] == 10**30
    assert kept["ts"]["when"] == "2024-05-01T12:30:00"
    assert kept["ts"]["price"] == "12.50" and kept["ts"]["blob"] == "AP8="


def test_a_truncated_zst_object_fails_its_shard_by_name(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    body = "".join(json.dumps({"id": i, "text": GOOD}) + "\n" for i in range(2000)).encode()
    packed = zstandard.ZstdCompressor().compress(body)
    cut = tmp_path / "in" / "part.jsonl.zst"
    cut.write_bytes(packed[: len(packed) // 2])
    result, local = filter_worker(str(tmp_path / "in"), str(tmp_path / "out"))
    assert result.returncode == EXIT_CONFIG_ERROR, result.stderr[-3000:]
    assert str(cut) in result.stderr and "truncated zstd" in result.stderr
    assert "Traceback" not in result.stderr
    ref = local.refs[0]
    assert read_marker(LocalStore(), ref.uri(local.job.output_uri), 0) is None
