"""A swallowcode RewriteJob (filter -> SGCR -> SCOR) run to Succeeded under chaos.

While the job runs, a seeded loop deletes or evicts (Eviction API) about a tenth of its pods,
never the same shard index of a Job twice, and kills the operator with SIGKILL once (then
starts it again). The job must still succeed with every input id ending exactly once in the
last stage's output or some stage's rejects, every part a marker lists present, and status
counts equal to the markers' sums, and the dataset manifest counting the kept records. The
run's counts go to .cluster/logs/e2e-chaos-counts.json and to stdout (`pytest -s`), so they can
be quoted; the operator's log to e2e-chaos-operator.log beside them.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from palimpsest.document import read_document
from palimpsest.storage import S3Settings, S3Store
from tests.cluster.fixtures import Cluster
from tests.e2e.rewritejobs import (
    LOGS,
    PROMPTS,
    Operator,
    assert_status_matches_markers,
    jobs,
    phase_in,
    rewrite_job,
    s3,
    scripted_model,
    write_input,
)
from tests.support.invariant import ended_ids
from tests.support.openai_server import ScriptedOpenAIServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SEED = 12
RECORDS_PER_SHARD = 4
RECORDS = 96
"""Two input files of 48 records, 24 shards; a quarter of the records do not compile."""
SHARDS_PER_POD = 2
EXPECTED_PODS = RECORDS // RECORDS_PER_SHARD + RECORDS // RECORDS_PER_SHARD // SHARDS_PER_POD
DISRUPTIONS = round(0.1 * EXPECTED_PODS)
RESTART_AFTER_PODS = EXPECTED_PODS // 3
"""The operator is killed once this many pods have been seen (mid-filter)."""
RUN_TIMEOUT = 240.0
COUNTS = LOGS / "e2e-chaos-counts.json"
JOB_INDEX = "batch.kubernetes.io/job-completion-index"


@dataclass
class Chaos:
    """Disrupts the pods whose order of appearance the seed picked; an owed disruption whose
    pod finished first falls on the next live pod instead."""

    core: client.CoreV1Api
    namespace: str
    rng: random.Random
    victims: set[int]
    actions: list[str]
    seen: dict[str, int] = field(default_factory=dict)
    owed: int = 0
    done: Counter[str] = field(default_factory=Counter)
    hit: set[tuple[str, str]] = field(default_factory=set)

    @staticmethod
    def seeded(core: client.CoreV1Api, namespace: str, seed: int) -> Chaos:
        rng = random.Random(seed)
        victims = set(rng.sample(range(EXPECTED_PODS), DISRUPTIONS))
        actions = rng.sample(["delete", "evict"] * DISRUPTIONS, DISRUPTIONS)
        return Chaos(core, namespace, rng, victims, actions)

    def step(self) -> None:
        pods = self.core.list_namespaced_pod(
            self.namespace, label_selector="batch.kubernetes.io/job-name"
        ).items
        for pod in sorted(pods, key=lambda p: (p.metadata.creation_timestamp, p.metadata.name)):
            if pod.metadata.name not in self.seen:
                self.seen[pod.metadata.name] = len(self.seen)
                if len(self.seen) - 1 in self.victims:
                    self.owed += 1
        while self.owed and self.actions:
            live = [p for p in pods if self.disruptable(p)]
            if not live:
                return
            pod = self.rng.choice(sorted(live, key=lambda p: str(p.metadata.name)))
            if self.disrupt(str(pod.metadata.name), self.actions[0]):
                self.done[self.actions.pop(0)] += 1
                self.hit.add(slot(pod))
            self.owed -= 1

    def disruptable(self, pod: Any) -> bool:
        scheduled = bool(pod.spec.node_name)
        alive = pod.status.phase in ("Pending", "Running") and not pod.metadata.deletion_timestamp
        return scheduled and alive and slot(pod) not in self.hit

    def disrupt(self, name: str, action: str) -> bool:
        try:
            if action == "delete":
                self.core.delete_namespaced_pod(name, self.namespace)
            else:
                meta = client.V1ObjectMeta(name=name, namespace=self.namespace)
                self.core.create_namespaced_pod_eviction(
                    name, self.namespace, client.V1Eviction(metadata=meta)
                )
        except ApiException as exc:  # gone already, or the eviction was refused
            if exc.status not in (404, 409, 429):
                raise
            return False
        return True


def slot(pod: Any) -> tuple[str, str]:
    labels = pod.metadata.labels or {}
    return labels.get("batch.kubernetes.io/job-name", ""), labels.get(JOB_INDEX, "")


def run_under_chaos(
    cluster: Cluster, namespace: str, operator: Operator, chaos: Chaos
) -> dict[str, Any]:
    """Poll until the job ends, disrupting pods and restarting the operator once."""
    restarted = False
    deadline = time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline:
        chaos.step()
        if not restarted and len(chaos.seen) >= RESTART_AFTER_PODS:
            operator.stop(signal.SIGKILL)
            time.sleep(1)
            operator.start()
            restarted = True
        status = phase_in(cluster, namespace, "code", "Succeeded", "Failed")
        if status:
            assert restarted, "the job ended before the operator was restarted"
            return status
        time.sleep(0.5)
    raise AssertionError(f"the job did not end within {RUN_TIMEOUT:.0f}s under chaos")


def test_job_succeeds_exactly_once_under_pod_chaos_and_an_operator_restart(
    k8s_cluster: Cluster, namespace: str, operator: Operator
) -> None:
    started = time.monotonic()
    prefix = f"e2e/{namespace}/chaos"
    input_uri = write_input(k8s_cluster.bucket, prefix, records=RECORDS, files=2)
    output_uri = f"s3://{k8s_cluster.bucket}/{prefix}/output"
    input_ids = [f"r{f}-{i}" for f in range(2) for i in range(RECORDS // 2)]
    prompts = {name: (PROMPTS / name).read_text() for name in ("code-sgcr.yaml", "code-scor.yaml")}
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "prompts"}}
    k8s_cluster.apply(yaml.safe_dump({**config_map, "data": prompts}), namespace)
    core = client.CoreV1Api(config.new_client_from_config(str(k8s_cluster.kubeconfig)))
    chaos = Chaos.seeded(core, namespace, SEED)
    server = ScriptedOpenAIServer()
    server.default = scripted_model
    with server.run():
        spec = {
            "stages": ["filter", "sgcr", "scor"],
            "sharding": {"recordsPerShard": RECORDS_PER_SHARD},
            "filter": {"parallelism": 4, "image": "palimpsest/filter:test", "timeLimitSeconds": 30},
            "rewrite": {
                "image": "palimpsest/rewrite:test",
                "parallelism": 3,
                "shardsPerPod": SHARDS_PER_POD,
                "prompts": {"configMapName": "prompts"},
                "engine": {"type": "openai", "model": "scripted", "baseURL": server.base_url},
            },
        }
        k8s_cluster.apply(rewrite_job("code", input_uri, output_uri, **spec), namespace)
        status = run_under_chaos(k8s_cluster, namespace, operator, chaos)
    assert status["phase"] == "Succeeded", status.get("message")

    store = S3Store(S3Settings(endpoint_url=os.environ["AWS_ENDPOINT_URL_S3"]))
    refs = read_document(store, status["jobDocument"]).stage_refs()
    ended = ended_ids(store, output_uri, refs, int(status["plan"]["shards"]))
    expected = Counter(repr(i) for i in input_ids)
    counts = {
        "seed": SEED,
        "shards": status["plan"]["shards"],
        "pods": len(chaos.seen),
        "podsDeleted": chaos.done["delete"],
        "podsEvicted": chaos.done["evict"],
        "operatorRestarts": 1,
        **job_counts(k8s_cluster, namespace),
        "records": status["records"],
        "rejectsByStage": {s["kind"]: s["records"]["rejected"] for s in status["stages"]},
        "duplicates": sum(n - 1 for n in ended.values() if n > 1),
        "missing": sum((expected - ended).values()),
        "seconds": round(time.monotonic() - started, 1),
    }
    LOGS.mkdir(parents=True, exist_ok=True)
    COUNTS.write_text(json.dumps(counts, indent=1) + "\n")
    shutil.copyfile(operator.log, LOGS / "e2e-chaos-operator.log")
    print("chaos run:", json.dumps(counts))
    assert chaos.done["delete"] + chaos.done["evict"] >= 1
    assert ended == expected  # every input id exactly once: outputs of SCOR plus all rejects
    assert status["records"]["in"] == RECORDS
    assert status["records"]["kept"] + sum(counts["rejectsByStage"].values()) == RECORDS
    assert_status_matches_markers(status)
    manifest_uri = str(status["manifestUri"]).removeprefix("s3://")
    bucket, _, key = manifest_uri.partition("/")
    manifest = json.loads(s3().get_object(Bucket=bucket, Key=key)["Body"].read())
    assert manifest["records"] == status["records"]["kept"]


def job_counts(cluster: Cluster, namespace: str) -> dict[str, Any]:
    """Failed pods the Jobs counted (retries spent) and indexes that failed for good."""
    listed = jobs(cluster, namespace)
    return {
        "jobs": len(listed),
        "jobFailedPods": sum(j["status"].get("failed", 0) for j in listed),
        "failedIndexes": [j["status"].get("failedIndexes", "") for j in listed],
    }
