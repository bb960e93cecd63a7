"""The dedup stage of a RewriteJob: its settings parsed once, its id, the Jobs of its four
steps in order, and the whole orchestration through the reconcile pass against a fake
cluster whose "pods" are real worker commands, on a corpus with known clusters across shards:
each cluster collapses to its lowest key, every id ends exactly once, status = marker sums."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from palimpsest.cli import main
from palimpsest.commit import REJECTS_KIND, read_committed, read_marker
from palimpsest.dedupstage import commit_files
from palimpsest.dedupsteps import COLUMNS, STEPS, DedupSettings, step_ref
from palimpsest.job import Job, parse_job
from palimpsest.localrun import LocalOptions, export, prepare, run_job
from palimpsest.stats import Stats
from palimpsest.storage import LocalStore, join
from palimpsest_operator import constants as c
from palimpsest_operator.jobs import Owner, stage_job, stage_jobs
from palimpsest_operator.placement import parse_placement
from tests.unit.test_dedup import corpus, duplicate_of, write_jsonl
from tests.unit.test_operator_reconcile import Harness

RECORDS_PER_SHARD = 9


def manifest(tmp: Path, stages: list[str], **dedup: Any) -> dict[str, Any]:
    return {
        "apiVersion": "palimpsest.dev/v1alpha1",
        "kind": "RewriteJob",
        "metadata": {"name": "dd", "namespace": "team"},
        "spec": {
            "recipe": "swallowcode",
            "stages": stages,
            "input": {"uri": str(tmp / "in")},
            "output": {"uri": str(tmp / "out")},
            "sharding": {"recordsPerShard": RECORDS_PER_SHARD},
            "dedup": dedup,
        },
    }


def written_corpus(folder: Path) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The known clusters over three objects, so copies sit in other objects and shards."""
    records, expected = corpus()
    folder.mkdir(exist_ok=True)
    thirds = [records[:30], records[30:70], records[70:]]
    for n, part in enumerate(thirds):
        write_jsonl(folder / f"part-{n}.jsonl", part)
    return records, expected


# --- settings and identity ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dedup", "field"),
    [
        ({"threshold": 0}, "spec.dedup.threshold"),
        ({"threshold": "high"}, "spec.dedup.threshold"),
        ({"exact": False, "near": False}, "spec.dedup.exact"),
        ({"columnRanges": 0}, "spec.dedup.columnRanges"),
        ({"columnRanges": COLUMNS + 1}, "spec.dedup.columnRanges"),
        ({"bands": 4}, "spec.dedup"),
    ],
)
def test_bad_settings_name_the_field(tmp_path: Path, dedup: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}"):
        parse_job(manifest(tmp_path, ["dedup"], **dedup))


def test_settings_parse_into_the_job(tmp_path: Path) -> None:
    job = parse_job(manifest(tmp_path, ["filter", "dedup"], threshold=0.9, exact=False))
    assert job.dedup == DedupSettings(threshold=0.9, exact=False, near=True, column_ranges=4)
    assert job.dedup.columns == list(range(1, COLUMNS))


def test_ranges_cover_the_compared_columns_once() -> None:
    for ranges in (1, 4, 7, COLUMNS):
        cut = DedupSettings(column_ranges=ranges).ranges()
        assert len(cut) == ranges
        assert [c for r in cut for c in r] == list(range(COLUMNS))
        assert max(map(len, cut)) - min(map(len, cut)) <= 1
    assert DedupSettings(near=False, column_ranges=4).ranges() == [[0]]


def stage_id(tmp: Path, **dedup: Any) -> str:
    job = parse_job(manifest(tmp, ["filter", "dedup"], **dedup))
    from palimpsest.identity import stage_refs

    return stage_refs(job, "plan-1", {})[1].stage_id


def test_deciding_settings_change_the_stage_id(tmp_path: Path) -> None:
    base = stage_id(tmp_path)
    assert base.startswith("dedup-")
    assert stage_id(tmp_path, threshold=0.8, exact=True, near=True, columnRanges=4) == base
    others = [
        stage_id(tmp_path, threshold=0.9),
        stage_id(tmp_path, exact=False),
        stage_id(tmp_path, near=False),
        stage_id(tmp_path, columnRanges=2),
    ]
    assert len({base, *others}) == 5


# --- the Jobs of the steps ------------------------------------------------------------------


def works(tmp: Path, shards: int = 5, **dedup: Any) -> list[Any]:
    spec = manifest(tmp, ["filter", "dedup"], **dedup)
    job = parse_job(spec)
    from palimpsest.identity import stage_refs

    refs = stage_refs(job, "plan-1", {})
    owner = Owner("dd", "team", "uid-1")
    return stage_jobs(job, parse_placement(spec), owner, "s3://b/job.json", refs, shards)


def test_steps_run_as_jobs_in_order_each_over_its_units(tmp_path: Path) -> None:
    found = works(tmp_path, shards=5, columnRanges=3)
    assert [(w.stages[0].kind, w.step, w.total_shards) for w in found] == [
        ("filter", None, 5),
        ("dedup", "signatures", 5),
        ("dedup", "buckets", 3),
        ("dedup", "clusters", 1),
        ("dedup", "filter", 5),
    ]
    manifests = [stage_job(w) for w in found[1:]]
    assert [m["spec"]["completions"] for m in manifests] == [5, 3, 1, 5]
    for step, job in zip(STEPS, manifests, strict=True):
        args = job["spec"]["template"]["spec"]["containers"][0]["args"]
        assert args[args.index("--stages") + 1] == "dedup"
        assert args[args.index("--step") + 1] == step
        assert args[args.index("--shards-per-index") + 1] == "1"
        assert len(job["metadata"]["name"]) <= 63
    names = [m["metadata"]["name"] for m in manifests]
    dedup_id = found[-1].stages[0].stage_id
    assert names[-1] == f"dd-{dedup_id}"
    assert len(set(names)) == 4 and names == [stage_job(w)["metadata"]["name"] for w in found[1:]]


def test_step_markers_live_under_the_stage_s_folder(tmp_path: Path) -> None:
    ref = works(tmp_path)[-1].stages[0]
    assert step_ref(ref, "filter") == ref
    buckets = step_ref(ref, "buckets")
    assert buckets.uri("s3://b/out") == f"s3://b/out/{ref.stage_id}/_steps/buckets"
    assert buckets.stage_id == f"{ref.stage_id}-buckets"


# --- the whole stage ------------------------------------------------------------------------


def check_outputs(job: Job, kept: list[dict[str, Any]], rejected: list[dict[str, Any]]) -> None:
    records, expected = corpus()
    assert duplicate_of(rejected) == expected
    assert {r["id"] for r in kept} == {r["id"] for r in records} - expected.keys()
    assert Counter(r["id"] for r in kept + rejected) == Counter(r["id"] for r in records)


def test_palimpsest_run_runs_the_steps_in_process_once(tmp_path: Path) -> None:
    written_corpus(tmp_path / "in")
    job = parse_job(manifest(tmp_path, ["dedup"]))
    local = prepare(job, LocalOptions())
    assert len(local.plan.shards) > 3
    run_job(local, LocalOptions())
    out, rej = tmp_path / "kept.jsonl", tmp_path / "rej.jsonl"
    summary = export(local, ["dedup"], str(out), str(rej))
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    rejected = [json.loads(line) for line in rej.read_text().splitlines()]
    check_outputs(job, kept, rejected)
    assert summary["stages"]["dedup"]["rejects"] == {"duplicate": len(corpus()[1])}
    before = sorted(p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*") if p.is_file())
    run_job(local, LocalOptions())  # every step committed: nothing runs or is written again
    after = sorted(p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert after == before


def run_pods(h: Harness, name: str) -> None:
    """What the Job's pods do: the worker command for each index, then the Job completes."""
    job = h.cluster.manifests[name]
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    indexes = job["spec"]["completions"]
    for index in range(indexes):
        assert main([*args, "--index", str(index)]) == 0
    h.cluster.progress(name, f"0-{indexes - 1}", finished="Complete")


def test_the_operator_runs_the_steps_in_order_to_succeeded(tmp_path: Path) -> None:
    written_corpus(tmp_path / "corpus")
    h = Harness(tmp_path, stages=["dedup"], sharding={"recordsPerShard": RECORDS_PER_SHARD})
    h.manifest["spec"]["input"]["uri"] = str(tmp_path / "corpus")
    order = []
    for _ in range(12):
        created = set(h.cluster.manifests)
        h.tick()
        new = sorted(set(h.cluster.manifests) - created)
        assert len(new) <= 1  # a step starts only once the one before committed every unit
        if h.status["phase"] == c.SUCCEEDED:
            break
        for name in new:
            args = h.cluster.manifests[name]["spec"]["template"]["spec"]["containers"][0]["args"]
            order.append(args[args.index("--step") + 1])
            run_pods(h, name)
    assert h.status["phase"] == c.SUCCEEDED, h.status.get("message")
    assert order == list(STEPS)
    shards = h.status["plan"]["shards"]
    stage_uri = h.stage_uri("dedup")
    store = LocalStore()
    markers = [read_marker(store, stage_uri, s) for s in range(shards)]
    sums = Stats()
    kept: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    for marker in markers:
        assert marker is not None
        sums.merge(marker.stats)
        kept += [r.record for r in read_committed(store, marker) if r.record]
        rejected += [r.record for r in read_committed(store, marker, REJECTS_KIND) if r.record]
    check_outputs(parse_job(h.manifest), kept, rejected)
    (entry,) = [s for s in h.status["stages"] if s["id"] == stage_uri.rsplit("/", 1)[-1]]
    assert entry["records"] == {"in": sums.records_in, "kept": sums.kept, "rejected": sums.rejected}
    assert entry["topRejects"] == {"duplicate": len(corpus()[1])}
    total = len(corpus()[0])
    assert h.status["records"] == {"in": total, "kept": sums.kept, "rejected": sums.rejected}
    assert sums.records_in == total
    assert read_marker(store, join(stage_uri, "_steps", "clusters"), 0) is not None

    # A rerun forgets the steps' markers too: no step reuses results of the old inputs.
    h.manifest["metadata"]["annotations"] = {c.ANNOTATION_RERUN: "2026-01-02"}
    h.tick()  # stops the old Jobs
    assert c.REASON_RERUN in [e.reason for e in h.tick().events]
    assert not list(Path(stage_uri).glob("**/_markers/*.json"))
    (first,) = h.cluster.jobs.values()
    assert first.name.endswith("-signatures-r1")


def test_a_step_unit_commits_once_and_a_losing_attempt_deletes_its_files(tmp_path: Path) -> None:
    store, uri = LocalStore(), str(tmp_path / "step")
    assert commit_files(store, uri, "dedup-x-buckets", 0, {"edges": [("e", b"one", 1)]}, Stats())
    assert not commit_files(
        store, uri, "dedup-x-buckets", 0, {"edges": [("e", b"two", 1)]}, Stats()
    )
    marker = read_marker(store, uri, 0)
    assert marker is not None
    (part,) = marker.parts["edges"]
    assert Path(part.uri).read_bytes() == b"one"
    assert [p.name for p in (tmp_path / "step" / "shard-000000").rglob("e")] == ["e"]
