"""One level-triggered pass over a RewriteJob: spec -> plan -> stage ids -> Jobs -> status.

Every tick starts from what is true now (the spec, the prompts, the S3 markers, the Jobs that
exist) and from the previous status (the plan and the counting checkpoint), and returns the
new status plus the Events to post. It never trusts that a Job existing means work is done:
a stage is done when every shard of it has a committed marker on S3. Because stage ids are
recomputed every tick, a spec edit or a prompt ConfigMap edit that changes a stage's id
launches that stage (and the ones after it) again, while unchanged stages are found complete
on S3 and reused; re-applying an unchanged spec changes nothing.

The cluster is reached through the small `Cluster` protocol, so the whole pass runs in unit
tests against a fake cluster and a local folder standing in for S3.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from palimpsest.chain import REWRITE_STAGES, STAGE_PROMPTS, StageRef
from palimpsest.commit import MARKERS, OUTPUT_KIND
from palimpsest.jobspec import JobSpec, job_stage_refs, load_job_prompts, parse_job
from palimpsest.plan import make_plan
from palimpsest.prompts import PromptError
from palimpsest.storage import join
from palimpsest_operator import constants as c
from palimpsest_operator import jobs as builders
from palimpsest_operator.progress import (
    Tally,
    advance,
    count_indexes,
    parse_indexes,
    read_markers,
    shards_of_indexes,
)
from palimpsest_operator.status import (
    StageView,
    conditions,
    current_shards,
    iso,
    rates,
    stage_entry,
    totals,
)
from palimpsest_operator.storage import JobStorage

log = logging.getLogger(__name__)

TOKENS_PER_BYTE = 0.25
"""Rough tokens per input byte for dry-run estimates (about four bytes per token)."""


@dataclass(frozen=True)
class JobView:
    """What the operator needs to know about one of its Jobs."""

    name: str
    stage_id: str
    suspended: bool = False
    active: int = 0
    completed_indexes: str | None = None
    failed_indexes: str | None = None
    finished: str | None = None  # "Complete" or "Failed" once the Job controller says so
    shards_per_index: int = 1


class Cluster(Protocol):
    """The API calls a tick makes."""

    def read_secret(self, namespace: str, name: str) -> dict[str, str] | None: ...

    def read_config_map(self, namespace: str, name: str) -> dict[str, str] | None: ...

    def list_jobs(self, namespace: str, owner: str) -> list[JobView]: ...

    def create_job(self, manifest: dict[str, Any]) -> bool: ...

    def delete_job(self, namespace: str, name: str) -> None: ...

    def set_job_suspended(self, namespace: str, name: str, suspended: bool) -> None: ...


@dataclass(frozen=True)
class Resource:
    """The RewriteJob as the tick receives it."""

    manifest: Mapping[str, Any]
    status: Mapping[str, Any]

    @property
    def meta(self) -> Mapping[str, Any]:
        return dict(self.manifest.get("metadata") or {})

    @property
    def name(self) -> str:
        return str(self.meta.get("name"))

    @property
    def namespace(self) -> str:
        return str(self.meta.get("namespace") or "default")

    @property
    def generation(self) -> int:
        return int(self.meta.get("generation") or 0)

    @property
    def annotations(self) -> Mapping[str, str]:
        return dict(self.meta.get("annotations") or {})


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass
class TickResult:
    status: dict[str, Any]
    events: list[Event] = field(default_factory=list)


StorageFactory = Callable[[JobSpec, Mapping[str, str] | None], JobStorage]


class Tick:
    """One pass over one RewriteJob; `run()` returns the status to write and Events to post."""

    def __init__(
        self,
        resource: Resource,
        cluster: Cluster,
        storage_for: StorageFactory,
        now: dt.datetime | None = None,
    ) -> None:
        self.res = resource
        self.cluster = cluster
        self.storage_for = storage_for
        self.now = now or dt.datetime.now(dt.UTC)
        self.old = dict(resource.status)
        self.status: dict[str, Any] = {}
        self.events: list[Event] = []
        self.reached_stages = False

    # --- the pass ---------------------------------------------------------------------------

    def run(self) -> TickResult:
        try:
            job = parse_job(self.res.manifest, self.res.namespace)
        except ValueError as exc:
            return self.finish(c.FAILED, c.REASON_INVALID_SPEC, str(exc))
        credentials: dict[str, str] | None = None
        if job.storage.secret_name:
            credentials = self.cluster.read_secret(job.namespace, job.storage.secret_name)
            if credentials is None:
                return self.finish(
                    c.PENDING,
                    c.REASON_STORAGE_ERROR,
                    f"waiting for Secret {job.storage.secret_name}",
                )
        try:
            prompts = self.load_prompts(job)
        except (PromptError, ValueError) as exc:
            return self.finish(c.FAILED, c.REASON_INVALID_SPEC, str(exc))
        storage = self.storage_for(job, credentials)
        plan = self.ensure_plan(job, storage)
        if plan is None:
            return self.result()
        if job.dry_run:
            self.status["dryRun"] = {k: plan[k] for k in ("shards", "estRecords", "estTokens")}
            return self.finish(
                c.SUCCEEDED,
                c.REASON_DRY_RUN,
                f"planned {plan['shards']} shards; nothing launched (dryRun)",
            )
        self.status.pop("dryRun", None)
        refs = job_stage_refs(job, str(plan["id"]), prompts)
        self.status["stageIds"] = {ref.kind: ref.stage_id for ref in refs}
        self.status["outputs"] = {ref.kind: ref.uri(job.output_uri) for ref in refs}
        attempt = self.handle_annotations(job, storage, refs)
        return self.run_stages(job, storage, refs, plan, attempt)

    def run_stages(
        self,
        job: JobSpec,
        storage: JobStorage,
        refs: Sequence[StageRef],
        plan: Mapping[str, Any],
        attempt: int,
    ) -> TickResult:
        self.reached_stages = True
        total = int(plan["shards"])
        plan_uri = str(plan["uri"])
        groups = stage_groups(refs)
        owner = builders.Owner(job.name, job.namespace, str(self.res.meta.get("uid", "")))
        wanted = {builders.job_name(job.name, group[-1].stage_id, attempt) for group in groups}
        existing = {view.name: view for view in self.cluster.list_jobs(job.namespace, job.name)}
        self.delete_stale(job, existing, wanted)
        checkpoint = dict(self.old.get("checkpoint") or {})
        previous_stages = {s.get("id"): s for s in self.old.get("stages") or []}
        views: list[StageView] = []
        phase, reason, message = (
            c.SUCCEEDED,
            c.REASON_SUCCEEDED,
            "every stage committed every shard",
        )
        blocked = False
        for group in groups:
            name = builders.job_name(job.name, group[-1].stage_id, attempt)
            jv = existing.get(name)
            tallies = [Tally.decode(checkpoint.get(ref.stage_id, {}), total) for ref in group]
            added = 0
            if not blocked:
                candidates = self.candidates(jv, total)
                for ref, tally in zip(group, tallies, strict=True):
                    scan = needs_scan(jv, ref.stage_id in checkpoint, tally)
                    added += advance(tally, storage, ref.uri(job.output_uri), candidates, scan)
            complete = all(t.complete for t in tallies)
            state = c.STAGE_SUCCEEDED if complete else c.STAGE_WAITING
            if not complete and not blocked:
                blocked = True
                phase, reason, message, state = self.drive(
                    job, owner, group, jv, name, plan_uri, total, attempt, tallies, added
                )
            for ref, tally in zip(group, tallies, strict=True):
                views.append(
                    self.view(
                        ref,
                        job,
                        name,
                        jv,
                        tally,
                        c.STAGE_SUCCEEDED if tally.complete else state,
                        previous_stages.get(ref.stage_id, {}),
                    )
                )
        self.status["checkpoint"] = {v.stage_id: v.tally.encode() for v in views}
        self.status["stages"] = [stage_entry(v) for v in views]
        self.status.update(totals(views))
        self.status.pop("throughput", None)
        self.status.pop("etaSeconds", None)
        running = next((v for v in views if v.state not in c.STAGE_DONE), views[-1])
        self.status["shards"] = current_shards(running)
        if phase in (c.FILTERING, c.REWRITING):
            base = (self.old.get("baseline") or {}).get(running.stage_id)
            self.status.update(rates(running, self.now, base))
        self.status["baseline"] = {
            v.stage_id: (self.old.get("baseline") or {}).get(v.stage_id)
            or {
                "shards": v.tally.count,
                "records": v.tally.stats.records_in,
                "generated": v.tally.stats.generated_tokens,
            }
            for v in views
            if v.state == c.STAGE_RUNNING
        }
        self.stage_events(views, previous_stages)
        if phase == c.SUCCEEDED:
            self.status["manifestUri"] = self.ensure_manifest(job, storage, refs[-1], views[-1])
        return self.finish(phase, reason, message)

    def drive(
        self,
        job: JobSpec,
        owner: builders.Owner,
        group: Sequence[StageRef],
        jv: JobView | None,
        name: str,
        plan_uri: str,
        total: int,
        attempt: int,
        tallies: Sequence[Tally],
        added: int,
    ) -> tuple[str, str, str, str]:
        """Move the first incomplete stage group on; returns (phase, reason, message, state).

        A finished Job whose stage still misses markers failed, unless it completed cleanly
        and this tick is still counting its markers (`added` > 0).
        """
        running_phase = c.REWRITING if group[0].kind in REWRITE_STAGES else c.FILTERING
        label = "+".join(ref.kind for ref in group)
        if jv is None:
            manifest = self.build_job(job, owner, group, plan_uri, total, attempt)
            if self.cluster.create_job(manifest):
                self.emit("Normal", c.REASON_JOB_CREATED, f"created Job {name} for {label}")
            state = c.STAGE_WAITING if job.suspend else c.STAGE_RUNNING
        else:
            if jv.suspended != job.suspend and not (job.queue_name and not job.suspend):
                self.cluster.set_job_suspended(job.namespace, name, job.suspend)
                self.emit(
                    "Normal",
                    c.REASON_SUSPENDED if job.suspend else c.REASON_RESUMED,
                    f"{'suspended' if job.suspend else 'resumed'} Job {name}",
                )
            failed_any = count_indexes(jv.failed_indexes) > 0
            still_counting = jv.finished == "Complete" and not failed_any and added > 0
            if jv.finished is not None and not still_counting:
                done = min(t.count for t in tallies)
                failed = count_indexes(jv.failed_indexes)
                return (
                    c.FAILED,
                    c.REASON_SHARDS_FAILED,
                    f"{label}: Job {name} finished ({jv.finished}) with {done}/{total} shards "
                    f"committed and {failed} failed indexes; set the "
                    f"{c.ANNOTATION_RETRY_FAILED} annotation to retry them",
                    c.STAGE_FAILED,
                )
            state = c.STAGE_RUNNING
        if job.suspend:
            return c.SUSPENDED, c.REASON_SUSPENDED, f"{label} suspended", c.STAGE_WAITING
        return running_phase, c.REASON_STAGE_RUNNING, f"{label} running as Job {name}", state

    def build_job(
        self,
        job: JobSpec,
        owner: builders.Owner,
        group: Sequence[StageRef],
        plan_uri: str,
        total: int,
        attempt: int,
    ) -> dict[str, Any]:
        if group[0].kind == "filter":
            return builders.filter_job(job, owner, group[0], plan_uri, total, attempt)
        return builders.rewrite_job(job, owner, group, plan_uri, total, attempt)

    def candidates(self, jv: JobView | None, total: int) -> list[int]:
        if jv is None:
            return []
        return shards_of_indexes(parse_indexes(jv.completed_indexes), jv.shards_per_index, total)

    def view(
        self,
        ref: StageRef,
        job: JobSpec,
        name: str,
        jv: JobView | None,
        tally: Tally,
        state: str,
        previous: Mapping[str, Any],
    ) -> StageView:
        first_seen_done = previous.get("state") in (None, c.STAGE_REUSED)
        if state == c.STAGE_SUCCEEDED and jv is None and first_seen_done:
            state = c.STAGE_REUSED  # complete on S3 before this job ran it
        started = previous.get("startedAt")
        if state == c.STAGE_RUNNING and not started:
            started = iso(self.now)
        finished = previous.get("finishedAt")
        if state in c.STAGE_DONE and not finished:
            finished = iso(self.now)
        if state not in c.STAGE_DONE:
            finished = None
        return StageView(
            kind=ref.kind,
            stage_id=ref.stage_id,
            uri=ref.uri(job.output_uri),
            job=name if jv is not None or state in (c.STAGE_RUNNING, c.STAGE_FAILED) else None,
            state=state,
            tally=tally,
            running=running_shards(jv, tally) if state not in c.STAGE_DONE else 0,
            failed=failed_shards(jv, tally),
            started_at=started,
            finished_at=finished,
        )

    # --- plan, prompts, annotations, stale Jobs, manifest ----------------------------------

    def ensure_plan(self, job: JobSpec, storage: JobStorage) -> dict[str, Any] | None:
        """The job's plan from status, or a new one written to S3 when the sharding changed."""
        key = plan_key(job)
        plan = dict(self.old.get("plan") or {})
        if plan.get("key") == key:
            self.status["plan"] = plan
            return plan
        try:
            shard_plan = make_plan(storage.store, job.input.uri, job.sharding)
        except ValueError as exc:
            self.finish(c.FAILED, c.REASON_PLAN_FAILED, f"spec.input.uri: {exc}")
            return None
        uri = join(job.output_uri, c.PLANS_DIR, f"plan-{shard_plan.plan_id}.json")
        storage.store.put_bytes(uri, shard_plan.to_json())
        input_bytes = sum(s.bytes for s in shard_plan.shards)
        plan = {
            "id": shard_plan.plan_id,
            "uri": uri,
            "shards": len(shard_plan.shards),
            "estRecords": shard_plan.est_records,
            "inputBytes": input_bytes,
            "estTokens": int(input_bytes * TOKENS_PER_BYTE),
            "key": key,
        }
        self.status["plan"] = plan
        self.emit(
            "Normal",
            c.REASON_PLANNED,
            f"planned {plan['shards']} shards (~{plan['estRecords']} records) at {uri}",
        )
        return plan

    def load_prompts(self, job: JobSpec) -> dict[str, Any]:
        if not job.rewrite_stages:
            return {}
        config_map = job.rewrite.prompts_config_map if job.rewrite else None
        if config_map is None:
            return dict(load_job_prompts(job))
        data = self.cluster.read_config_map(job.namespace, config_map)
        if data is None:
            raise ValueError(
                f"spec.rewrite.prompts.configMapName: ConfigMap {config_map} not found"
            )
        with tempfile.TemporaryDirectory(prefix="palimpsest-prompts-") as folder:
            for key, text in data.items():
                if "/" not in key:
                    (Path(folder) / key).write_text(text, encoding="utf-8")
            missing = [
                f"{STAGE_PROMPTS[k]}.yaml"
                for k in job.rewrite_stages
                if f"{STAGE_PROMPTS[k]}.yaml" not in data
            ]
            if missing:
                raise ValueError(
                    f"spec.rewrite.prompts.configMapName: ConfigMap {config_map} "
                    f"has no {', '.join(missing)}"
                )
            return dict(load_job_prompts(job, Path(folder)))

    def handle_annotations(
        self, job: JobSpec, storage: JobStorage, refs: Sequence[StageRef]
    ) -> int:
        """Act once on a new rerun or retry-failed annotation value; returns the Job attempt."""
        retried = dict(self.old.get("retried") or {})
        attempt = int(retried.get("attempt", 0))
        notes = self.res.annotations
        retry = notes.get(c.ANNOTATION_RETRY_FAILED)
        if retry is not None and retry != retried.get("retryFailed"):
            retried["retryFailed"] = retry
            if self.old.get("phase") == c.FAILED:
                attempt += 1
                self.emit(
                    "Normal", c.REASON_RETRYING, f"retrying uncommitted shards (attempt {attempt})"
                )
        rerun = notes.get(c.ANNOTATION_RERUN)
        if rerun is not None and rerun != retried.get("rerun"):
            retried["rerun"] = rerun
            attempt += 1
            deleted = sum(self.forget_stage(storage, ref.uri(job.output_uri)) for ref in refs)
            self.old.pop("checkpoint", None)
            self.old.pop("stages", None)
            self.emit(
                "Normal",
                c.REASON_RERUN,
                f"rerun requested: removed {deleted} shard markers, running every stage again",
            )
        retried["attempt"] = attempt
        self.status["retried"] = retried
        return attempt

    @staticmethod
    def forget_stage(storage: JobStorage, stage_uri: str) -> int:
        """Delete a stage's markers, so that its shards run again (their parts stay behind)."""
        listing = storage.store.list(join(stage_uri, MARKERS))
        for info in listing:
            storage.store.delete(info.uri)
        return len(listing)

    def delete_stale(self, job: JobSpec, existing: Mapping[str, JobView], wanted: set[str]) -> None:
        for name in sorted(set(existing) - wanted):
            self.cluster.delete_job(job.namespace, name)
            self.emit(
                "Normal",
                c.REASON_STALE_JOB_DELETED,
                f"deleted Job {name}: its stage is no longer part of the spec",
            )

    def ensure_manifest(
        self, job: JobSpec, storage: JobStorage, last: StageRef, view: StageView
    ) -> str:
        """The final dataset manifest (written once): the last stage's committed parts."""
        uri = join(job.output_uri, c.MANIFESTS_DIR, f"{last.stage_id}.json")
        if self.old.get("manifestUri") == uri:
            return uri
        stage_uri = last.uri(job.output_uri)
        parts: list[dict[str, Any]] = []
        for marker in read_markers(storage, stage_uri, list(range(view.tally.total))):
            if marker is None:
                continue
            for part in marker.parts.get(OUTPUT_KIND, []):
                parts.append({"shard": marker.shard, **dataclasses.asdict(part)})
        body = {
            "rewriteJob": f"{job.namespace}/{job.name}",
            "stage": last.kind,
            "stageId": last.stage_id,
            "records": sum(p["records"] for p in parts),
            "bytes": sum(p["bytes"] for p in parts),
            "parts": parts,
        }
        storage.store.put_bytes(uri, json.dumps(body, indent=1).encode("utf-8"))
        return uri

    # --- status and events ------------------------------------------------------------------

    def stage_events(
        self, views: Sequence[StageView], previous: Mapping[Any, Mapping[str, Any]]
    ) -> None:
        for v in views:
            before = previous.get(v.stage_id, {}).get("state")
            if v.state == before:
                continue
            if v.state == c.STAGE_SUCCEEDED:
                self.emit(
                    "Normal",
                    c.REASON_STAGE_SUCCEEDED,
                    f"{v.kind} ({v.stage_id}) committed all {v.tally.total} shards",
                )
            elif v.state == c.STAGE_REUSED:
                self.emit(
                    "Normal",
                    c.REASON_STAGE_REUSED,
                    f"{v.kind} ({v.stage_id}) reused: all {v.tally.total} shards already on S3",
                )
            elif v.state == c.STAGE_FAILED:
                self.emit("Warning", c.REASON_SHARDS_FAILED, f"{v.kind} ({v.stage_id}) failed")

    def emit(self, kind: str, reason: str, message: str) -> None:
        self.events.append(Event(kind, reason, message))

    def finish(self, phase: str, reason: str, message: str) -> TickResult:
        if phase != self.old.get("phase"):
            kind = "Warning" if phase == c.FAILED else "Normal"
            self.emit(kind, reason, f"{phase}: {message}")
        self.status["phase"] = phase
        self.status["message"] = message
        self.status["observedGeneration"] = self.res.generation
        self.status["conditions"] = conditions(
            phase, reason, message, self.res.generation, self.old.get("conditions") or [], self.now
        )
        if not self.reached_stages:
            # An early stop (bad spec, missing Secret) keeps the counts of the last full pass.
            for key, value in self.old.items():
                if key not in self.status and key not in ("kopf", "dryRun"):
                    self.status[key] = value
        return self.result()

    def result(self) -> TickResult:
        return TickResult(self.status, self.events)


def running_shards(jv: JobView | None, tally: Tally) -> int:
    """Shards in the hands of running pods (a rewrite pod holds a block of them)."""
    if jv is None:
        return 0
    return min(jv.active * jv.shards_per_index, tally.total - tally.count)


def failed_shards(jv: JobView | None, tally: Tally) -> int:
    """Uncommitted shards of the Job's failed indexes."""
    if jv is None:
        return 0
    failed = shards_of_indexes(parse_indexes(jv.failed_indexes), jv.shards_per_index, tally.total)
    return len(tally.missing(failed))


def needs_scan(jv: JobView | None, checkpointed: bool, tally: Tally) -> bool:
    """Whether a tick also walks the stage's marker listing (one page after the cursor).

    While the stage's Job runs, its completed indexes name every newly committed shard, so
    the listing is only walked when no running Job speaks for the stage (none exists, e.g.
    outputs of an earlier run, or it finished), when the stage is first seen (no checkpoint
    yet), and until a walk that has started reaches the end of the listing.
    """
    return jv is None or jv.finished is not None or not checkpointed or tally.cursor >= 0


def stage_groups(refs: Sequence[StageRef]) -> list[list[StageRef]]:
    """Stages as the Jobs run them: the filter alone, consecutive rewrite stages together."""
    groups: list[list[StageRef]] = []
    for ref in refs:
        rewrite = ref.kind in REWRITE_STAGES
        if groups and rewrite and groups[-1][-1].kind in REWRITE_STAGES:
            groups[-1].append(ref)
        else:
            groups.append([ref])
    return groups


def plan_key(job: JobSpec) -> str:
    """What a plan depends on besides the input listing: input URI, format and sharding."""
    body = {
        "input": job.input.uri,
        "format": job.input.format,
        "sharding": dataclasses.asdict(job.sharding),
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def reconcile(
    resource: Resource,
    cluster: Cluster,
    storage_for: StorageFactory,
    now: dt.datetime | None = None,
) -> TickResult:
    return Tick(resource, cluster, storage_for, now).run()
