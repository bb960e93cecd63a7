"""The reconcile pass against a fake cluster and a local folder standing in for S3.

Covers the level-triggered flow (plan -> Job -> markers -> Succeeded), restart safety of
the counting checkpoint, spec edits that change stage ids, failure and retry, suspend,
dry runs and invalid specs, without a cluster.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from palimpsest.cardstats import describer
from palimpsest.commit import ShardOutput, marker_uri
from palimpsest.document import read_document
from palimpsest.job import Job, parse_job
from palimpsest.stats import Stats
from palimpsest.storage import LocalStore
from palimpsest_operator import constants as c
from palimpsest_operator.cluster import JobView, Resource, TickResult, WorkloadView
from palimpsest_operator.evictions import FailedPod, give_up_uri
from palimpsest_operator.progress import Tally, advance, parse_indexes
from palimpsest_operator.reconcile import reconcile
from palimpsest_operator.status import StageView, merge_patch
from palimpsest_operator.storage import QUARANTINE_DIR, JobStorage
from palimpsest_operator.trust import TrustPolicy

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


class FakeCluster:
    def __init__(self) -> None:
        self.jobs: dict[str, JobView] = {}
        self.manifests: dict[str, dict[str, Any]] = {}
        self.deleted: list[str] = []
        self.lingering = False  # deleted Jobs stay, marked deleting, like foreground deletion
        self.secrets: dict[str, dict[str, str]] = {}
        self.config_maps: dict[str, dict[str, str]] = {}
        self.failed_pods: dict[str, list[FailedPod]] = {}
        self.secret_labels: dict[str, dict[str, str]] = {}
        self.workloads: dict[str, WorkloadView] = {}  # by Job uid

    def read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        return self.secrets.get(name)

    def read_secret_labels(self, namespace: str, name: str) -> dict[str, str] | None:
        return self.secret_labels.get(name)

    def read_config_map(self, namespace: str, name: str) -> dict[str, str] | None:
        return self.config_maps.get(name)

    def list_jobs(self, namespace: str, owner: str) -> list[JobView]:
        return list(self.jobs.values())

    def create_job(self, manifest: dict[str, Any]) -> bool:
        name = manifest["metadata"]["name"]
        if name in self.jobs:
            return False
        self.manifests[name] = manifest
        self.jobs[name] = JobView(
            name,
            manifest["metadata"]["labels"][c.LABEL_STAGE_ID],
            suspended=manifest["spec"]["suspend"],
            shards_per_index=int(
                manifest["metadata"]["annotations"][c.ANNOTATION_SHARDS_PER_INDEX]
            ),
            shard_list=manifest["metadata"]["annotations"].get(c.ANNOTATION_SHARD_LIST),
            uid=f"uid-{name}",
        )
        return True

    def delete_job(self, namespace: str, name: str) -> None:
        self.deleted.append(name)
        if self.lingering:
            self.jobs[name] = replace(self.jobs[name], deleting=True)
        else:
            self.jobs.pop(name, None)

    def set_job_suspended(self, namespace: str, name: str, suspended: bool) -> None:
        self.jobs[name] = replace(self.jobs[name], suspended=suspended)

    def list_failed_pods(self, namespace: str, job: str) -> list[FailedPod]:
        return self.failed_pods.get(job, [])

    def find_workload(self, namespace: str, job_uid: str) -> WorkloadView | None:
        return self.workloads.get(job_uid)

    def progress(
        self, name: str, completed: str, finished: str | None = None, failed: str | None = None
    ) -> None:
        self.jobs[name] = replace(
            self.jobs[name], completed_indexes=completed, finished=finished, failed_indexes=failed
        )


def local_storage(job: Job, credentials: Mapping[str, str] | None) -> JobStorage:
    return JobStorage(LocalStore())


class Harness:
    """A RewriteJob whose status is patched the way the handler patches it."""

    def __init__(self, tmp: Path, **spec: Any) -> None:
        (tmp / "in").mkdir()
        lines = [json.dumps({"id": f"r{i}", "text": f"x = {i}\n"}) for i in range(6)]
        (tmp / "in" / "part-0.jsonl").write_text("\n".join(lines) + "\n")
        self.output = str(tmp / "out")
        self.cluster = FakeCluster()
        self.manifest: dict[str, Any] = {
            "apiVersion": "palimpsest.dev/v1alpha1",
            "kind": "RewriteJob",
            "metadata": {"name": "demo", "namespace": "team", "uid": "u1", "generation": 1},
            "spec": {
                "recipe": "swallowcode",
                "stages": ["filter"],
                "input": {"uri": str(tmp / "in")},
                "output": {"uri": self.output},
                "sharding": {"recordsPerShard": 2},
                **spec,
            },
        }
        self.status: dict[str, Any] = {}
        self.policy = TrustPolicy()

    def tick(self) -> TickResult:
        result = reconcile(
            Resource(copy.deepcopy(self.manifest), copy.deepcopy(self.status)),
            self.cluster,
            local_storage,
            now=NOW,
            policy=self.policy,
        )
        patch = merge_patch(self.status, result.status)
        self.status = apply_merge_patch(self.status, patch)
        assert self.status == json.loads(json.dumps(result.status))
        return result

    def stage_uri(self, kind: str = "filter") -> str:
        return str(self.status["outputs"][kind])

    def finish_filter(self, kept: int = 1, uncounted: tuple[int, ...] = ()) -> None:
        """Start the filter Job, commit its 3 shards (those in `uncounted` without card
        statistics) and tick once more with the Job complete."""
        self.tick()
        (name,) = self.cluster.jobs
        for shard in range(3):
            self.commit(shard, kept=kept, card=shard not in uncounted)
        self.cluster.progress(name, "0-2", finished="Complete")
        self.tick()

    def commit(self, shard: int, kind: str = "filter", kept: int = 1, card: bool = True) -> None:
        """Commit a shard as a worker does (`card`: with the final stage's card statistics)."""
        uri = self.stage_uri(kind)
        out = ShardOutput(LocalStore(), uri, uri.rsplit("/", 1)[-1], shard)
        stats = Stats()
        for i in range(kept):
            out.write({"id": f"{shard}-{i}", "text": "x"})
            stats.keep()
        stats.reject("syntax_error")
        describe = describer(LocalStore(), parse_job(self.manifest)) if card else None
        assert out.commit(stats, describe=describe)


def apply_merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = apply_merge_patch(out.get(key), value)
    return out


def reasons(result: TickResult) -> list[str]:
    return [e.reason for e in result.events]


def test_filter_job_runs_to_succeeded(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    first = h.tick()
    assert h.status["phase"] == c.FILTERING
    assert {c.REASON_PLANNED, c.REASON_JOB_CREATED} <= set(reasons(first))
    total = h.status["plan"]["shards"]
    assert total == 3 and Path(h.status["plan"]["uri"]).exists()
    (name,) = h.cluster.jobs
    assert h.cluster.manifests[name]["spec"]["completions"] == total

    assert not h.tick().events  # nothing new: no events, no duplicate Job
    assert len(h.cluster.manifests) == 1

    h.commit(0)
    h.commit(1)
    h.cluster.progress(name, "0-1")
    h.tick()
    assert h.status["shards"]["succeeded"] == 2 and h.status["phase"] == c.FILTERING
    assert h.status["progress"] == "66%"

    h.commit(2)
    h.cluster.progress(name, "0-2", finished="Complete")
    done = h.tick()
    assert h.status["phase"] == c.SUCCEEDED
    assert c.REASON_STAGE_SUCCEEDED in reasons(done)
    assert h.status["records"] == {"in": 6, "kept": 3, "rejected": 3}
    assert h.status["stages"][0]["topRejects"] == {"syntax_error": 3}
    ready = {k["type"]: k["status"] for k in h.status["conditions"]}
    assert ready[c.COND_READY] == "True" and ready[c.COND_PROGRESSING] == "False"
    manifest = json.loads(Path(h.status["manifestUri"]).read_text())
    assert manifest["records"] == 3 and manifest["shards"] == 3
    (parts,) = manifest["partLists"]
    assert len(Path(parts).read_text().splitlines()) == 3

    again = h.tick()  # re-applying / re-ticking an unchanged job does nothing
    assert not again.events and h.status["records"]["kept"] == 3


def test_restart_rebuilds_counts_from_markers_without_double_counting(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.tick()
    (name,) = h.cluster.jobs
    for shard in range(3):
        h.commit(shard)
    h.cluster.progress(name, "0-1")
    h.tick()
    counted = h.status["records"]["in"]
    # the same markers seen again (a crash before the status write) are not counted again
    h.cluster.progress(name, "0-2", finished="Complete")
    h.tick()
    # while the Job runs, its completed indexes decide what is read: shard 2 waited for it
    assert counted == 4 and h.status["records"]["in"] == 6
    # status lost entirely (resource re-created): the counts come back from S3 alone
    h.status = {}
    h.cluster.jobs.clear()
    h.tick()
    assert h.status["phase"] == c.SUCCEEDED and h.status["records"]["in"] == 6
    assert not h.cluster.jobs  # a stage complete on S3 launches nothing
    assert h.status["stages"][0]["state"] == c.STAGE_REUSED


def test_spec_edit_reruns_the_changed_stage_and_deletes_the_stale_job(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.tick()
    (old,) = h.cluster.jobs
    old_id = h.status["stageIds"]["filter"]
    h.manifest["spec"]["filter"] = {"minScore": 8}
    h.manifest["metadata"]["generation"] = 2
    result = h.tick()
    assert h.status["stageIds"]["filter"] != old_id
    assert h.cluster.deleted == [old]
    assert c.REASON_STALE_JOB_DELETED in reasons(result)
    assert list(h.cluster.jobs) != [old] and len(h.cluster.jobs) == 1
    assert h.status["observedGeneration"] == 2
    assert old_id not in h.status["checkpoint"]


def test_failed_shards_then_retry_failed(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.tick()
    (name,) = h.cluster.jobs
    h.commit(0)
    h.commit(2)
    h.cluster.progress(name, "0,2", finished="Failed", failed="1")
    h.tick()
    assert h.status["phase"] == c.FAILED
    assert h.status["shards"] == {"total": 3, "succeeded": 2, "failed": 1, "running": 0}
    assert "retry-failed" in h.status["message"]

    h.manifest["metadata"]["annotations"] = {c.ANNOTATION_RETRY_FAILED: "1"}
    result = h.tick()
    assert c.REASON_RETRYING in reasons(result)
    assert name in h.cluster.deleted
    (retry,) = h.cluster.jobs
    assert retry.endswith("-r1") and h.status["phase"] == c.FILTERING
    h.tick()  # the same annotation value acts only once
    assert list(h.cluster.jobs) == [retry]
    # the retry Job runs only shard 1: one index, through a shard list the worker reads
    manifest = h.cluster.manifests[retry]
    assert manifest["spec"]["completions"] == 1
    args = manifest["spec"]["template"]["spec"]["containers"][0]["args"]
    listed = args[args.index("--shard-list") + 1]
    assert json.loads(Path(listed).read_text()) == [1]
    assert manifest["metadata"]["annotations"][c.ANNOTATION_SHARD_LIST] == listed
    h.commit(1)
    h.cluster.progress(retry, "0", finished="Complete")
    h.tick()
    assert (h.status["phase"], h.status["shards"]["succeeded"]) == (c.SUCCEEDED, 3)


@pytest.mark.parametrize(
    ("completed", "failed", "succeeded", "failed_shards"),
    [("1", "0", 2, 1), ("0", "1", 2, 1), ("", "0,1", 1, 2)],
)
def test_a_retry_job_s_indexes_name_the_listed_shards(
    tmp_path: Path, completed: str, failed: str, succeeded: int, failed_shards: int
) -> None:
    h = Harness(tmp_path)
    h.tick()
    (first,) = h.cluster.jobs
    h.commit(0)
    h.cluster.progress(first, "0", finished="Failed", failed="1,2")
    h.tick()
    h.manifest["metadata"]["annotations"] = {c.ANNOTATION_RETRY_FAILED: "a"}
    h.tick()
    (retry,) = h.cluster.jobs
    assert h.cluster.manifests[retry]["spec"]["completions"] == 2  # shards 1 and 2
    for index in parse_indexes(completed):
        h.commit(index + 1)  # index i of the retry runs shard i + 1
    h.cluster.progress(retry, completed, finished="Failed", failed=failed)
    h.tick()
    shards = h.status["shards"]
    assert (shards["succeeded"], shards["failed"]) == (succeeded, failed_shards)


def test_suspend_and_resume(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.tick()
    (name,) = h.cluster.jobs
    h.manifest["spec"]["suspend"] = True
    h.tick()
    assert h.status["phase"] == c.SUSPENDED and h.cluster.jobs[name].suspended
    h.manifest["spec"]["suspend"] = False
    h.tick()
    assert h.status["phase"] == c.FILTERING and not h.cluster.jobs[name].suspended


def conditions_of(status: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {str(x["type"]): x for x in status["conditions"]}


def test_queued_job_is_created_suspended_and_waits_for_kueue(tmp_path: Path) -> None:
    h = Harness(tmp_path, queueName="gpu-queue")
    h.tick()
    (name,) = h.cluster.jobs
    job = h.cluster.manifests[name]
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"][c.LABEL_KUEUE_QUEUE] == "gpu-queue"
    for _ in range(2):  # the operator never admits it itself
        h.tick()
        assert h.cluster.jobs[name].suspended
        assert h.status["phase"] == c.WAITING_FOR_ADMISSION
    waiting = conditions_of(h.status)[c.COND_WAITING_FOR_ADMISSION]
    assert waiting["status"] == "True" and name in waiting["message"]
    assert "gpu-queue" in waiting["message"] and "no Workload yet" in waiting["message"]
    quota = "insufficient unused quota for nvidia.com/gpu in flavor gpu, 1 more needed"
    h.cluster.workloads[f"uid-{name}"] = WorkloadView(f"job-{name}-3f2a1", quota)
    h.tick()  # Kueue made the Workload and tried to admit it
    waiting = conditions_of(h.status)[c.COND_WAITING_FOR_ADMISSION]
    assert f"workload job-{name}-3f2a1: {quota}" in waiting["message"]
    assert conditions_of(h.status)[c.COND_SUSPENDED]["status"] == "False"
    h.cluster.set_job_suspended("team", name, False)  # Kueue admits it
    h.tick()
    assert h.status["phase"] == c.FILTERING
    assert conditions_of(h.status)[c.COND_WAITING_FOR_ADMISSION]["status"] == "False"


def test_queued_job_still_follows_spec_suspend(tmp_path: Path) -> None:
    h = Harness(tmp_path, queueName="gpu-queue")
    h.tick()
    (name,) = h.cluster.jobs
    h.cluster.set_job_suspended("team", name, False)  # admitted
    h.manifest["spec"]["suspend"] = True
    h.tick()
    assert h.cluster.jobs[name].suspended and h.status["phase"] == c.SUSPENDED
    h.manifest["spec"]["suspend"] = False
    h.tick()  # resuming is Kueue's: the Job waits for admission again
    assert h.cluster.jobs[name].suspended
    assert h.status["phase"] == c.WAITING_FOR_ADMISSION


def test_unqueued_job_is_created_running(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.tick()
    (name,) = h.cluster.jobs
    assert h.cluster.manifests[name]["spec"]["suspend"] is False
    assert c.LABEL_KUEUE_QUEUE not in h.cluster.manifests[name]["metadata"]["labels"]


def test_dry_run_plans_and_launches_nothing(tmp_path: Path) -> None:
    h = Harness(tmp_path, dryRun=True)
    result = h.tick()
    assert h.status["phase"] == c.SUCCEEDED and not h.cluster.jobs
    assert h.status["dryRun"]["shards"] == 3 and h.status["dryRun"]["estRecords"] == 6
    assert c.REASON_DRY_RUN in reasons(result)


@pytest.mark.parametrize(
    ("spec", "text"),
    [
        ({"filter": {"minScore": 12}}, "spec.filter.minScore"),
        ({"storage": {"secretRef": {"name": "absent"}}}, "waiting for Secret absent"),
    ],
)
def test_bad_spec_or_missing_secret_is_reported(
    tmp_path: Path, spec: dict[str, Any], text: str
) -> None:
    h = Harness(tmp_path, **spec)
    h.tick()
    assert text in h.status["message"] and not h.cluster.jobs


def test_rewrite_follows_the_filter_and_prompt_edits_rerun_only_scor(tmp_path: Path) -> None:
    from palimpsest.prompts import BUILTIN_PROMPTS_DIR

    prompts = {
        name: (BUILTIN_PROMPTS_DIR / name).read_text()
        for name in ("code-sgcr.yaml", "code-scor.yaml")
    }
    h = Harness(
        tmp_path,
        stages=["filter", "sgcr", "scor"],
        rewrite={
            "engine": {"type": "openai", "model": "m", "baseURL": "http://llm/v1"},
            "prompts": {"configMapName": "prompts"},
            "shardsPerPod": 2,
        },
    )
    h.cluster.config_maps["prompts"] = dict(prompts)
    h.tick()
    (filter_job,) = h.cluster.jobs
    for shard in range(3):
        h.commit(shard)
    h.cluster.progress(filter_job, "0-2", finished="Complete")
    h.tick()
    assert h.status["phase"] == c.REWRITING
    rewrite_job = next(n for n in h.cluster.jobs if n != filter_job)
    assert h.cluster.manifests[rewrite_job]["spec"]["completions"] == 2
    h.cluster.jobs[rewrite_job] = replace(
        h.cluster.jobs[rewrite_job], shards_per_index=2, active=1, failed_indexes="1"
    )
    h.tick()
    # one pod holds a block of two shards; the failed index 1 holds shard 2 only
    assert h.status["shards"] == {"total": 3, "succeeded": 0, "failed": 1, "running": 2}
    h.cluster.jobs[rewrite_job] = replace(
        h.cluster.jobs[rewrite_job], active=0, failed_indexes=None
    )
    for shard in range(3):
        h.commit(shard, "sgcr")
        h.commit(shard, "scor")
    h.cluster.progress(rewrite_job, "0-1", finished="Complete")
    h.tick()
    assert h.status["phase"] == c.SUCCEEDED
    ids = dict(h.status["stageIds"])

    h.cluster.config_maps["prompts"]["code-scor.yaml"] += "\n# tightened\n"
    h.tick()
    assert h.status["stageIds"]["filter"] == ids["filter"]
    assert h.status["stageIds"]["sgcr"] == ids["sgcr"]
    assert h.status["stageIds"]["scor"] != ids["scor"]
    assert h.status["phase"] == c.REWRITING
    states = {s["kind"]: s["state"] for s in h.status["stages"]}
    assert states == {"filter": "Succeeded", "sgcr": "Succeeded", "scor": "Running"}
    assert rewrite_job in h.cluster.deleted


def test_missing_prompt_in_config_map_is_a_spec_error(tmp_path: Path) -> None:
    h = Harness(
        tmp_path,
        stages=["filter", "sgcr"],
        rewrite={
            "engine": {"type": "openai", "model": "m", "baseURL": "http://llm/v1"},
            "prompts": {"configMapName": "prompts"},
        },
    )
    h.cluster.config_maps["prompts"] = {}
    h.tick()
    assert h.status["phase"] == c.FAILED and "code-sgcr.yaml" in h.status["message"]


def test_rerun_annotation_runs_every_stage_again_once(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.tick()
    (name,) = h.cluster.jobs
    for shard in range(3):
        h.commit(shard)
    h.cluster.progress(name, "0-2", finished="Complete")
    h.tick()
    assert h.status["phase"] == c.SUCCEEDED
    checkpoints = Path(h.stage_uri(), "_checkpoints", "shard-000000")
    checkpoints.mkdir(parents=True)
    (checkpoints / "old-000000.json").write_text("{}")
    h.manifest["metadata"]["annotations"] = {c.ANNOTATION_RERUN: "2026-01-02"}
    h.cluster.lingering = True  # deleted Jobs stay until their pods have stopped
    result = h.tick()
    assert h.status["phase"] == c.PENDING and "waiting for 1 Jobs" in h.status["message"]
    assert name in h.cluster.deleted
    assert len(list(Path(h.stage_uri(), "_markers").iterdir())) == 3  # old pods may still run
    h.tick()
    assert h.cluster.deleted.count(name) == 1  # asked once
    h.cluster.lingering = False
    h.cluster.jobs.pop(name)  # its pods are gone
    result = h.tick()
    assert c.REASON_RERUN in reasons(result)
    assert h.status["phase"] == c.FILTERING and h.status["shards"]["succeeded"] == 0
    assert not list(Path(h.stage_uri(), "_markers").iterdir())
    assert not list(checkpoints.iterdir())
    (again,) = h.cluster.jobs
    assert again.endswith("-r1")
    assert not h.tick().events  # the same value acts once
    assert list(h.cluster.jobs) == [again]


def test_a_deleted_plan_or_job_document_is_written_again(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.tick()
    plan, document = Path(h.status["plan"]["uri"]), Path(h.status["jobDocument"])
    body = plan.read_bytes()
    plan.unlink()
    document.unlink()
    h.tick()
    assert plan.read_bytes() == body  # the same listing gives the same plan
    assert document.exists() and h.status["jobDocument"] == str(document)


def test_an_index_evicted_past_its_retries_is_given_up_once(tmp_path: Path) -> None:
    h = Harness(tmp_path, retries={"perShard": 1})
    h.tick()
    (name,) = h.cluster.jobs
    h.cluster.failed_pods[name] = [
        FailedPod(1, "TerminationByKubelet"),
        FailedPod(1),
        FailedPod(2, "PreemptionByScheduler"),
        FailedPod(2, "PreemptionByScheduler"),
    ]
    result = h.tick()
    assert reasons(result).count(c.REASON_INDEX_GIVEN_UP) == 1
    assert os.path.exists(give_up_uri(h.output, name, 1))
    assert not os.path.exists(give_up_uri(h.output, name, 2))
    assert c.REASON_INDEX_GIVEN_UP not in reasons(h.tick())  # announced once


@pytest.mark.parametrize("garbage", [b"not json", b"[1, 2]", b'{"shard": 1}'])
def test_an_unreadable_marker_is_quarantined_and_its_shard_runs_again(
    tmp_path: Path, garbage: bytes
) -> None:
    quarantine_one_marker(tmp_path, garbage)


def quarantine_one_marker(tmp_path: Path, garbage: bytes) -> tuple[Harness, str]:
    """Shards 0-2 committed, shard 1's marker replaced by `garbage`; returns the harness
    once the re-run Job of shard 1 exists, and that Job's name."""
    h = Harness(tmp_path)
    h.tick()
    (first,) = h.cluster.jobs
    for shard in range(3):
        h.commit(shard)
    marker = marker_uri(h.stage_uri(), 1)
    Path(marker).write_bytes(garbage)
    h.cluster.progress(first, "0-2", finished="Complete")
    result = h.tick()  # the other shards are still counted
    assert h.status["shards"]["succeeded"] == 2
    (event,) = [e for e in result.events if e.reason == c.REASON_MARKER_QUARANTINED]
    assert event.type == "Warning" and marker in event.message
    assert not Path(marker).exists()
    (aside,) = (Path(h.stage_uri()) / QUARANTINE_DIR).iterdir()
    assert aside.read_bytes() == garbage
    condition = conditions_of(h.status)[c.COND_MARKERS_QUARANTINED]
    assert condition["status"] == "True" and "shards [1]" in condition["message"]
    assert h.status["phase"] == c.FILTERING, "not Failed: the shard is re-run"

    h.tick()  # the finished Job counted nothing new: the shard goes to a new attempt
    assert h.status["phase"] == c.FILTERING and h.status["retried"]["attempt"] == 1
    h.tick()  # whose Job runs only shard 1
    (retry,) = h.cluster.jobs
    assert retry != first and first in h.cluster.deleted
    assert h.cluster.manifests[retry]["spec"]["completions"] == 1
    return h, retry


def test_a_quarantined_shard_committed_again_clears_the_condition(tmp_path: Path) -> None:
    h, retry = quarantine_one_marker(tmp_path, b"not json")
    h.commit(1)
    h.cluster.progress(retry, "0", finished="Complete")
    h.tick()
    assert h.status["phase"] == c.SUCCEEDED and h.status["shards"]["succeeded"] == 3
    assert c.COND_MARKERS_QUARANTINED not in conditions_of(h.status)
    assert "quarantined" not in h.status


def test_a_quarantined_shard_is_re_run_once_not_forever(tmp_path: Path) -> None:
    h, retry = quarantine_one_marker(tmp_path, b"not json")
    h.cluster.progress(retry, "", finished="Failed", failed="0")
    h.tick()
    assert h.status["phase"] == c.FAILED and list(h.cluster.jobs) == [retry]
    assert h.status["retried"]["attempt"] == 1
    assert c.COND_MARKERS_QUARANTINED in conditions_of(h.status)


def test_the_dataset_card_is_summed_over_ticks_after_the_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from palimpsest_operator import datacard

    monkeypatch.setattr(datacard, "CHUNK_SHARDS", 1)
    monkeypatch.setattr(datacard, "CHUNKS_PER_TICK", 2)
    h = Harness(tmp_path)
    h.finish_filter(kept=2, uncounted=(1,))
    assert h.status["manifestUri"] and "cardUri" not in h.status
    assert h.status["phase"] == c.FILTERING and h.status["card"]["next"] == 2
    ready = {k["type"]: k for k in h.status["conditions"]}
    assert ready[c.COND_PROGRESSING]["reason"] == c.REASON_WRITING_CARD
    stray = Path(h.stage_uri()) / "output" / "shard-000001" / "dead" / "part-00000.jsonl.zst"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"")  # an attempt that died between its upload and its marker
    h.tick()
    assert h.status["phase"] == c.SUCCEEDED
    card = Path(h.status["cardUri"])
    assert card.parent == Path(h.status["manifestUri"]).parent.parent
    ready = {k["type"]: k for k in h.status["conditions"]}
    assert str(card) in ready[c.COND_READY]["message"]
    body = card.read_text()
    assert "- records: 4" in body and "| 9 | 6 | 3 | syntax_error 3 |" in body
    assert "- tokens: 4 (counted with whitespace-separated words" in body
    assert "1 shards are not in these figures: their markers carry no card statistics" in body
    assert "1 objects beside the committed parts are left from attempts" in body
    files = yaml.safe_load(body.split("---\n")[1])["configs"][0]["data_files"][0]["path"]
    assert len(files) == 3 and not any("dead" in f or "*" in f for f in files)
    assert all((card.parent / f).is_file() for f in files)
    written = card.stat().st_mtime_ns
    h.tick()  # nothing new: the card is not written again
    assert card.stat().st_mtime_ns == written and h.status["phase"] == c.SUCCEEDED


def test_a_tick_past_its_budget_leaves_the_card_to_the_next(tmp_path: Path) -> None:
    from palimpsest_operator.datacard import CardPosition, write_card_step

    h = Harness(tmp_path)
    h.finish_filter()  # the card is written in the tick that finishes the stage...
    document = read_document(LocalStore(), h.status["jobDocument"])
    tally = Tally.empty(3)
    advance(tally, local_storage(document.job, None), h.stage_uri(), range(3))
    view = StageView("filter", document.stage_refs()[0].stage_id, h.stage_uri(), None, "", tally)
    storage = local_storage(document.job, None)
    # ...unless that tick's budget is spent: then not one chunk starts
    assert write_card_step(storage, document, [view], CardPosition(), deadline=0.0) == (
        CardPosition(),
        None,
    )
    at, uri = write_card_step(storage, document, [view], CardPosition(), deadline=None)
    assert (at.next, at.listed, at.listing_done) == (3, 3, True) and uri == h.status["cardUri"]


class SteppingClock:
    """A clock that advances one second each time it is read."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def test_a_card_chunk_is_cut_at_the_deadline_and_the_next_tick_sums_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No marker read of the card starts after the tick's deadline (but a tick's first): the
    chunk is saved where the reads stopped, and the card summed over several such ticks is
    the card of one uncut step."""
    from palimpsest_operator.datacard import CardPosition, write_card_step

    monkeypatch.setattr("palimpsest_operator.progress.MARKER_READ_THREADS", 1)  # in order
    h = Harness(tmp_path)
    h.finish_filter(kept=2)
    document = read_document(LocalStore(), h.status["jobDocument"])
    tally = Tally.empty(3)
    advance(tally, local_storage(document.job, None), h.stage_uri(), range(3))
    view = StageView("filter", document.stage_refs()[0].stage_id, h.stage_uri(), None, "", tally)
    card = Path(h.status["cardUri"])
    uncut = card.read_text()
    card.unlink()

    clock, started = SteppingClock(), []

    class Reads(JobStorage):
        def read_marker(self, stage_uri: str, shard: int) -> Any:
            started.append((shard, clock.now))
            return super().read_marker(stage_uri, shard)

    storage = Reads(LocalStore())
    at, uri, positions = CardPosition(), None, []
    while uri is None and len(positions) < 10:
        first, deadline = at.next, clock.now + 2.5
        at, uri = write_card_step(storage, document, [view], at, deadline, clock)
        assert all(t <= deadline for s, t in started if s != first)
        started.clear()
        positions.append(at.next)
    assert positions == [1, 2, 3, 3]  # one shard a tick (a cut chunk each), then the listing
    assert uri == str(card) and card.read_text() == uncut
