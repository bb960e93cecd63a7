"""The dedup stage end to end on the test cluster: one Indexed Job per step, in order.

A corpus with known clusters (exact copies, whitespace-only copies and copies with a few
tokens edited, spread over three objects and so over several shards) and unrelated records
goes through `stages: [dedup]`; the operator runs signatures (one index per shard), buckets
(one per column range), clusters (one) and filter (one per shard) as Jobs, each after the one
before committed every unit. Each cluster collapses to its lowest key across shards, every
id ends exactly once, and the status equals the markers' sums.
"""

from __future__ import annotations

import itertools
import json
import os
from typing import Any

import pytest

from palimpsest.commit import REJECTS_KIND, read_committed, read_marker
from palimpsest.document import read_document
from palimpsest.records import Record
from palimpsest.storage import S3Settings, Store, store_for
from tests.cluster.fixtures import Cluster
from tests.e2e.rewritejobs import (
    Operator,
    assert_status_matches_markers,
    jobs,
    phase_in,
    rewrite_job,
    s3,
)
from tests.support.invariant import check_invariant
from tests.support.waiting import wait_until
from tests.unit.test_dedup import corpus, duplicate_of

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

COLUMN_RANGES = 2


def write_corpus(bucket: str, prefix: str, records: list[Record]) -> str:
    for n, part in enumerate((records[:30], records[30:70], records[70:])):
        body = "".join(json.dumps(r) + "\n" for r in part)
        s3().put_object(Bucket=bucket, Key=f"{prefix}/input/part-{n}.jsonl", Body=body.encode())
    return f"s3://{bucket}/{prefix}/input/"


def s3_store(uri: str) -> Store:
    return store_for(
        uri, S3Settings(endpoint_url=os.environ["AWS_ENDPOINT_URL_S3"], region="us-east-1")
    )


def rejects(stage_uri: str, shards: int) -> list[Record]:
    """The stage's rejected records, read through its markers."""
    store = s3_store(stage_uri)
    rejected: list[Record] = []
    for shard in range(shards):
        marker = read_marker(store, stage_uri, shard)
        assert marker is not None, shard
        rejected += [r.record for r in read_committed(store, marker, REJECTS_KIND) if r.record]
    return rejected


def step_of(job: dict[str, Any]) -> str:
    args: list[str] = job["spec"]["template"]["spec"]["containers"][0]["args"]
    return args[args.index("--step") + 1]


def test_dedup_runs_as_ordered_jobs_and_collapses_each_cluster_to_its_lowest_key(
    k8s_cluster: Cluster,
    namespace: str,
    operator: Operator,
) -> None:
    records, expected = corpus()
    prefix = f"e2e/{namespace}/dedup"
    input_uri = write_corpus(k8s_cluster.bucket, prefix, records)
    output_uri = f"s3://{k8s_cluster.bucket}/{prefix}/output"
    spec = rewrite_job(
        "dd",
        input_uri,
        output_uri,
        stages=["dedup"],
        sharding={"recordsPerShard": 20},
        dedup={"columnRanges": COLUMN_RANGES},
    )
    k8s_cluster.apply(spec, namespace)

    status = wait_until(
        "the dedup job to succeed",
        lambda: phase_in(k8s_cluster, namespace, "dd", "Succeeded", "Failed"),
        timeout=150,
    )
    assert status["phase"] == "Succeeded", status.get("message")
    shards = status["plan"]["shards"]
    assert shards == 6  # objects of 30, 40 and 32 records

    created = sorted(jobs(k8s_cluster, namespace), key=lambda j: j["metadata"]["creationTimestamp"])
    assert [step_of(j) for j in created] == ["signatures", "buckets", "clusters", "filter"]
    assert [j["spec"]["completions"] for j in created] == [shards, COLUMN_RANGES, 1, shards]
    for before, after in itertools.pairwise(created):
        assert before["status"]["completionTime"] <= after["metadata"]["creationTimestamp"]

    stage_uri = status["outputs"]["dedup"]
    assert [s["uri"].removeprefix(stage_uri) for s in status["stages"]] == [
        "/_steps/signatures",
        "/_steps/buckets",
        "/_steps/clusters",
        "",
    ]
    assert_status_matches_markers(status)
    assert duplicate_of(rejects(stage_uri, shards)) == expected
    # Every part a marker lists exists with its count, and every id ends exactly once.
    store = s3_store(output_uri)
    refs = read_document(store, status["jobDocument"]).stage_refs()
    check_invariant(store, output_uri, refs, shards, [r["id"] for r in records])
    assert status["records"] == {
        "in": len(records),
        "kept": len(records) - len(expected),
        "rejected": len(expected),
    }
    assert status["stages"][-1]["topRejects"] == {"duplicate": len(expected)}
