"""The operator's dataset card over markers real worker pods wrote to S3 (moto's server): each
worker counted its shard's final texts with the reference tokenizer and put them into its
marker; the operator's step sums the markers over several ticks into README.md next to the
manifest, and that card's `data_files` glob loads the Parquet parts with `datasets`."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import boto3
import pytest
import yaml
from tokenizers import Tokenizer, models, pre_tokenizers

from palimpsest.card import CARD_NAME, final_stage
from palimpsest.commit import read_marker
from palimpsest.job import parse_job
from palimpsest.stages.decontam import humaneval_items
from palimpsest.storage import S3Settings, S3Store
from palimpsest_operator import datacard
from palimpsest_operator.progress import Tally, advance
from palimpsest_operator.status import StageView
from palimpsest_operator.storage import JobStorage
from tests.support.jobs import manifest, prepared, worker_command
from tests.support.s3server import S3Server

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CLEAN = [f"def add_{i}(a, b):\n    return a + b + {i}\n" * (1 + i % 3) for i in range(9)]
VOCAB = {"[UNK]": 0, "def": 1, "return": 2, "a": 3, "b": 4}


def word_tokenizer(folder: Path) -> Tokenizer:
    tokenizer = Tokenizer(models.WordLevel(VOCAB, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    folder.mkdir()
    tokenizer.save(str(folder / "tokenizer.json"))
    return tokenizer


def put_input(server: S3Server, bucket: str) -> None:
    task = humaneval_items()[3]
    rows = [{"id": f"c{i}", "text": t} for i, t in enumerate(CLEAN)]
    rows.insert(4, {"id": "copy", "text": task.texts[0] + task.texts[1]})
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()
    client = boto3.client("s3", endpoint_url=server.endpoint)
    client.put_object(Bucket=bucket, Key="in/part-0.jsonl", Body=body)


def download(server: S3Server, bucket: str, prefix: str, target: Path) -> None:
    client = boto3.client("s3", endpoint_url=server.endpoint)
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            path = target / obj["Key"].removeprefix(prefix)
            path.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, obj["Key"], str(path))


def test_the_operator_sums_worker_card_statistics_into_a_loadable_card(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datasets

    tokenizer = word_tokenizer(tmp_path / "tok")
    put_input(s3_server, s3_bucket)
    out = f"s3://{s3_bucket}/out"
    job = parse_job(
        manifest(
            stages=["decontam"],
            input={"uri": f"s3://{s3_bucket}/in/"},
            output={"uri": out, "format": "parquet"},
            storage={"endpoint": s3_server.endpoint},
            sharding={"recordsPerShard": 4},
            card={"tokenizer": str(tmp_path / "tok"), "license": "apache-2.0"},
        )
    )
    local = prepared(job)
    shards = len(local.plan.shards)
    assert shards == 3
    for index in range(shards):
        env = {**os.environ, **s3_server.env(), "JOB_COMPLETION_INDEX": str(index)}
        done = subprocess.run(
            worker_command(local, ("decontam",)),
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr

    s3 = S3Store(S3Settings(endpoint_url=s3_server.endpoint))
    (last,) = local.document.stage_refs()
    markers = [read_marker(s3, last.uri(out), s) for s in range(shards)]
    assert all(m is not None and m.card is not None for m in markers)  # counted by the workers
    tally = Tally.empty(shards)
    assert advance(tally, JobStorage(s3), last.uri(out), range(shards)) == shards
    view = StageView(last.kind, last.stage_id, last.uri(out), None, "Succeeded", tally)
    monkeypatch.setattr(datacard, "CHUNK_SHARDS", 1)
    monkeypatch.setattr(datacard, "CHUNKS_PER_TICK", 2)
    at, uri, ticks = datacard.CardPosition(), None, 0
    while uri is None:  # the operator is restarted between ticks: only the position survives
        at = datacard.position(datacard.position_status(at, last.stage_id), last.stage_id)
        at, uri = datacard.write_card_step(JobStorage(s3), local.document, [view], at)
        ticks += 1
    # 3 chunks of markers, then one page lists the 3 committed parts: 2 steps a tick
    assert ticks == 2 and at.listed == 3 and uri == f"{out}/{CARD_NAME}"

    tokens = sum(len(tokenizer.encode(t, add_special_tokens=False).ids) for t in CLEAN)
    _, summed = final_stage(s3, job, last, shards)
    assert (summed.records, summed.tokens, summed.tokenizer) == (9, tokens, str(tmp_path / "tok"))
    copy = tmp_path / "copy"
    download(s3_server, s3_bucket, "out/", copy)
    _, head, body = (copy / CARD_NAME).read_text().split("---\n", 2)
    assert f"- tokens: {tokens} (counted with {tmp_path / 'tok'})" in body
    assert "- records: 9" in body and "| decontam |" in body and "contaminated 1" in body
    (glob,) = yaml.safe_load(head)["configs"][0]["data_files"][0]["path"]
    assert glob == f"{last.stage_id}/output/shard-*/*/part-*.parquet"
    cache = str(tmp_path / "cache")
    by_glob = datasets.load_dataset(
        "parquet", data_files=str(copy / glob), split="train", cache_dir=cache
    )
    assert sorted(by_glob["id"]) == sorted(f"c{i}" for i in range(9))
    by_card = datasets.load_dataset(str(copy), split="train", cache_dir=cache)
    assert sorted(by_card["text"]) == sorted(CLEAN)
