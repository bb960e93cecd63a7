"""One level-triggered pass over a RewriteJob: spec -> plan -> job document -> Jobs -> status.

Every tick starts from what is true now (the spec, the prompts, the S3 markers, the Jobs that
exist) and from the previous status (the plan and the counting checkpoint), and returns the
new status plus the Events to post. It never trusts that a Job existing means work is done:
a stage is done when every shard of it has a committed marker on S3. Because stage ids are
recomputed every tick, a spec edit or a prompt ConfigMap edit that changes a stage's id
launches that stage (and the ones after it) again, while unchanged stages are found complete
on S3 and reused; re-applying an unchanged spec changes nothing.

The stages run group by group (`stages.registry.groups`: a CPU stage alone, consecutive LLM
stages together), each group as one Indexed Job (`jobs.stage_job`; dedup as one Job per
step, `jobs.stage_jobs`), the next only once the previous one committed every shard (or
step unit). The cluster is reached through `cluster.Cluster`, so
the whole pass runs in unit tests against a fake cluster and a local folder standing in for S3.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from palimpsest.commit import CorruptMarkerError
from palimpsest.dedupsteps import with_steps
from palimpsest.document import JobDocument
from palimpsest.identity import StageRef
from palimpsest.job import Job, parse_job
from palimpsest.stages.registry import Runner
from palimpsest_operator import constants as c
from palimpsest_operator import jobs as builders
from palimpsest_operator.annotations import (
    read_shard_list,
    requested,
    rerun_pending,
    retry_list,
)
from palimpsest_operator.cluster import (
    Cluster,
    Event,
    JobView,
    Resource,
    TickResult,
    WorkloadView,
)
from palimpsest_operator.datacard import card_uri, position, position_status, write_card_step
from palimpsest_operator.evictions import exhausted_indexes, give_up_uri
from palimpsest_operator.inputs import ensure_document, ensure_plan, load_prompts
from palimpsest_operator.manifest import ManifestProgress, manifest_uri, write_manifest_step
from palimpsest_operator.placement import Placement, parse_placement
from palimpsest_operator.progress import (
    Tally,
    advance,
    count_indexes,
    parse_indexes,
    shards_of_indexes,
)
from palimpsest_operator.status import (
    StageView,
    conditions,
    current_shards,
    iso,
    quarantine_conditions,
    rates,
    stage_entry,
    totals,
)
from palimpsest_operator.storage import JobStorage
from palimpsest_operator.trust import TrustPolicy, denial

log = logging.getLogger(__name__)

StorageFactory = Callable[[Job, Mapping[str, str] | None], JobStorage]


@dataclass
class GroupRun:
    """One stage group in this tick: what its Job runs, the Job if it exists, the tallies."""

    work: builders.StageJob
    view: JobView | None
    tallies: list[Tally]
    added: int = 0
    """Shards newly counted this tick (a finished Job may still be being counted)."""
    order: list[int] | None = None
    """The shard list the Job's indexes count through (a retry Job), None: the plan."""

    @property
    def label(self) -> str:
        return "+".join(ref.kind for ref in self.work.stages)

    @property
    def complete(self) -> bool:
        return all(t.complete for t in self.tallies)


class Tick:
    """One pass over one RewriteJob; `run()` returns the status to write and Events to post.

    The previous status is only read; the new one is built from nothing in `self.status`."""

    def __init__(
        self,
        resource: Resource,
        cluster: Cluster,
        storage_for: StorageFactory,
        now: dt.datetime | None = None,
        budget: float | None = None,
        policy: TrustPolicy | None = None,
    ) -> None:
        self.res = resource
        self.policy = policy or TrustPolicy()
        self.deadline = None if budget is None else time.monotonic() + budget
        """Marker reads not started by then are left to the next tick."""
        self.cluster = cluster
        self.storage_for = storage_for
        self.now = now or dt.datetime.now(dt.UTC)
        self.old: Mapping[str, Any] = resource.status
        self.status: dict[str, Any] = {}
        self.events: list[Event] = []
        self.reached_stages = False

    # --- the pass ---------------------------------------------------------------------------

    def run(self) -> TickResult:
        try:
            job = parse_job(self.res.manifest)
            placement = parse_placement(self.res.manifest)
        except ValueError as exc:
            return self.finish(c.FAILED, c.REASON_INVALID_SPEC, str(exc))
        refused = denial(placement, self.policy, self.secret_labels)
        if refused:
            return self.finish(c.FAILED, c.REASON_DENIED, refused)
        credentials: dict[str, str] | None = None
        if placement.storage_secret:
            credentials = self.cluster.read_secret(self.res.namespace, placement.storage_secret)
            if credentials is None:
                return self.finish(
                    c.PENDING,
                    c.REASON_STORAGE_ERROR,
                    f"waiting for Secret {placement.storage_secret}",
                )
        try:
            prompts = load_prompts(job, placement, self.cluster, self.res.namespace)
        except ValueError as exc:
            return self.finish(c.FAILED, c.REASON_INVALID_SPEC, str(exc))
        storage = self.storage_for(job, credentials)
        try:
            plan, made = ensure_plan(job, storage.store, self.old.get("plan") or {})
        except ValueError as exc:
            return self.finish(c.FAILED, c.REASON_PLAN_FAILED, f"spec.input.uri: {exc}")
        self.status["plan"] = plan
        if made:
            self.emit(
                "Normal",
                c.REASON_PLANNED,
                f"planned {plan['shards']} shards (~{plan['estRecords']} records) at {plan['uri']}",
            )
        if job.dry_run:
            self.status["dryRun"] = {k: plan[k] for k in ("shards", "estRecords", "estTokens")}
            return self.finish(
                c.SUCCEEDED,
                c.REASON_DRY_RUN,
                f"planned {plan['shards']} shards; nothing launched (dryRun)",
            )
        document, document_uri = ensure_document(
            job, plan, prompts, storage.store, self.old.get("jobDocument")
        )
        self.status["jobDocument"] = document_uri
        refs = document.stage_refs()
        self.status["stageIds"] = {ref.kind: ref.stage_id for ref in refs}
        self.status["outputs"] = {ref.kind: ref.uri(job.output_uri) for ref in refs}
        if rerun_pending(self.res.annotations, self.old):
            waiting = self.stop_old_jobs()
            if waiting:
                return self.finish(
                    c.PENDING,
                    c.REASON_RERUN,
                    f"rerun requested: waiting for {waiting} Jobs of the previous run to stop",
                )
        asked = requested(
            self.res.annotations, self.old, storage.store, job.output_uri, with_steps(refs)
        )
        self.events += asked.events
        self.status["retried"] = asked.retried
        previous = {} if asked.forget_counts else self.old
        works = builders.stage_jobs(
            job,
            placement,
            builders.Owner(self.res.name, self.res.namespace, self.res.uid),
            document_uri,
            refs,
            int(plan["shards"]),
            asked.attempt,
        )
        return self.run_stages(document, placement, storage, works, previous)

    def run_stages(
        self,
        document: JobDocument,
        placement: Placement,
        storage: JobStorage,
        works: Sequence[builders.StageJob],
        previous: Mapping[str, Any],
    ) -> TickResult:
        self.reached_stages = True
        job = document.job
        existing = {v.name: v for v in self.cluster.list_jobs(self.res.namespace, self.res.name)}
        self.delete_stale(existing, {w.name for w in works})
        checkpoint = dict(previous.get("checkpoint") or {})
        previous_stages = {s.get("id"): s for s in previous.get("stages") or []}
        views: list[StageView] = []
        outcome = (c.SUCCEEDED, c.REASON_SUCCEEDED, "every stage committed every shard")
        blocked = False
        for work in works:
            run = GroupRun(
                work,
                existing.get(work.name),
                [
                    Tally.decode(checkpoint.get(r.stage_id, {}), work.total_shards)
                    for r in work.stages
                ],
            )
            if run.view is not None and run.view.shard_list:
                run.order = read_shard_list(storage.store, run.view.shard_list)
            if not blocked:
                self.count(run, storage, checkpoint)
            state = c.STAGE_SUCCEEDED if run.complete else c.STAGE_WAITING
            if not run.complete and not blocked:
                blocked = True
                self.give_up_evicted(run, placement.retries.per_shard, storage)
                phase, reason, message, state = self.drive(run, placement, storage)
                outcome = (phase, reason, message)
            for ref, tally in zip(work.stages, run.tallies, strict=True):
                own = c.STAGE_SUCCEEDED if tally.complete else state
                views.append(self.view(ref, run, tally, own, previous_stages.get(ref.stage_id, {})))
        self.write_counts(views, outcome[0], previous)
        self.stage_events(views, previous_stages)
        if outcome[0] == c.SUCCEEDED:
            last = works[-1].stages[-1]
            uri = self.ensure_manifest(job, storage, last, views[-1])
            if uri is None:
                done = self.status["manifest"]["next"]
                outcome = (
                    c.REWRITING if job.rewrite else c.FILTERING,
                    c.REASON_WRITING_MANIFEST,
                    f"writing the dataset manifest: {done} of {views[-1].tally.total} shards",
                )
            else:
                self.status["manifestUri"] = uri
                outcome = self.ensure_card(document, storage, views, outcome)
        return self.finish(*outcome)

    def count(self, run: GroupRun, storage: JobStorage, checkpoint: Mapping[str, Any]) -> None:
        """Count the group's newly committed shards into its tallies."""
        view = run.view
        candidates = []
        if view is not None:
            completed = parse_indexes(view.completed_indexes)
            candidates = shards_of_indexes(
                completed, view.shards_per_index, run.work.total_shards, run.order
            )
        for ref, tally in zip(run.work.stages, run.tallies, strict=True):
            scan = needs_scan(view, ref.stage_id in checkpoint, tally)
            uri = ref.uri(run.work.job.output_uri)
            corrupt: list[CorruptMarkerError] = []
            run.added += advance(tally, storage, uri, candidates, scan, corrupt, self.deadline)
            for error in corrupt:
                aside = storage.quarantine(uri, error)
                self.emit(
                    "Warning",
                    c.REASON_MARKER_QUARANTINED,
                    f"{error.uri}: unreadable marker moved to {aside}; shard {error.shard} "
                    "runs again",
                )
            self.note_quarantined(ref.stage_id, tally, [e.shard for e in corrupt], run)

    def note_quarantined(
        self, stage_id: str, tally: Tally, shards: Sequence[int], run: GroupRun
    ) -> None:
        """Keep the quarantined shards of a stage in status until they are committed again,
        with the attempt that found them (they are re-run once, by the next attempt)."""
        before = (self.old.get("quarantined") or {}).get(stage_id) or {}
        pending = sorted(set(tally.missing([*before.get("shards", []), *shards])))
        if pending:
            attempt = run.work.attempt if shards else before.get("attempt", run.work.attempt)
            entry = {"shards": pending, "attempt": attempt}
            self.status.setdefault("quarantined", {})[stage_id] = entry

    def requeue_quarantined(self, run: GroupRun) -> int:
        """Shards of the group still missing after quarantine; when the Job of the attempt
        that found them has finished without them, the next tick runs them under a new attempt
        (a Job over the missing shards only). A later attempt that fails them fails as usual."""
        quarantined = self.status.get("quarantined") or {}
        entries = [quarantined.get(ref.stage_id) or {} for ref in run.work.stages]
        missing = {
            s for e in entries if e.get("attempt") == run.work.attempt for s in e.get("shards", [])
        }
        if missing:
            self.status["retried"]["attempt"] = run.work.attempt + 1
        return len(missing)

    def drive(
        self, run: GroupRun, placement: Placement, storage: JobStorage
    ) -> tuple[str, str, str, str]:
        """Move the first incomplete stage group on; returns (phase, reason, message, state).

        A finished Job whose stage still misses markers failed, unless it completed cleanly
        and this tick is still counting its markers (`run.added` > 0).
        """
        work, view = run.work, run.view
        running_phase = c.REWRITING if work.runner is Runner.LLM else c.FILTERING
        if view is None:
            if work.attempt and any(t.count for t in run.tallies):
                # A retry: its Job runs only the shards not committed yet.
                only = retry_list(storage.store, work.job.output_uri, work.name, run.tallies)
                work = replace(work, only=only)
            if self.cluster.create_job(builders.stage_job(work)):
                self.emit(
                    "Normal", c.REASON_JOB_CREATED, f"created Job {work.name} for {run.label}"
                )
            state = (
                c.STAGE_WAITING if placement.suspend or placement.queue_name else c.STAGE_RUNNING
            )
        else:
            self.follow_suspend(view, placement)
            failed = count_indexes(view.failed_indexes)
            counting = run.added > 0 or self.past_deadline()
            still_counting = view.finished == "Complete" and not failed and counting
            if view.finished is not None and not still_counting:
                requeued = self.requeue_quarantined(run)
                if requeued:
                    message = f"{run.label}: re-running {requeued} shards with unreadable markers"
                    return running_phase, c.REASON_MARKER_QUARANTINED, message, c.STAGE_RUNNING
            if view.finished is not None and not still_counting:
                done = min(t.count for t in run.tallies)
                return (
                    c.FAILED,
                    c.REASON_SHARDS_FAILED,
                    f"{run.label}: Job {work.name} finished ({view.finished}) with "
                    f"{done}/{work.total_shards} shards committed and {failed} failed indexes; "
                    f"set the {c.ANNOTATION_RETRY_FAILED} annotation to retry them",
                    c.STAGE_FAILED,
                )
            state = c.STAGE_RUNNING
        if placement.suspend:
            return c.SUSPENDED, c.REASON_SUSPENDED, f"{run.label} suspended", c.STAGE_WAITING
        if placement.queue_name and (view is None or view.suspended):
            # Created suspended for Kueue, which admits it by unsuspending it.
            workload = self.cluster.find_workload(work.owner.namespace, view.uid) if view else None
            message = admission_message(run.label, work.name, placement.queue_name, workload)
            return (
                c.WAITING_FOR_ADMISSION,
                c.REASON_WAITING_FOR_ADMISSION,
                message,
                c.STAGE_WAITING,
            )
        message = f"{run.label} running as Job {work.name}"
        return running_phase, c.REASON_STAGE_RUNNING, message, state

    def give_up_evicted(self, run: GroupRun, retries: int, storage: JobStorage) -> None:
        """Give up the indexes of the running Job that the kubelet evicted past their retries
        (evictions.py); each is announced once, when its give-up object is first written."""
        view = run.view
        if view is None or view.finished is not None:
            return
        pods = self.cluster.list_failed_pods(self.res.namespace, view.name)
        for index in exhausted_indexes(pods, retries):
            uri = give_up_uri(run.work.job.output_uri, view.name, index)
            if storage.store.put_bytes(uri, b"{}", if_absent=True):
                self.emit(
                    "Warning",
                    c.REASON_INDEX_GIVEN_UP,
                    f"{run.label}: Job {view.name} index {index} failed more than "
                    f"{retries} times with node-pressure evictions; giving it up",
                )

    def follow_suspend(self, view: JobView, placement: Placement) -> None:
        """Suspend or resume the Job as spec.suspend says; a queued Job is only ever
        suspended here, never resumed: Kueue admits it by unsuspending it."""
        if view.suspended == placement.suspend or (placement.queue_name and not placement.suspend):
            return
        self.cluster.set_job_suspended(self.res.namespace, view.name, placement.suspend)
        self.emit(
            "Normal",
            c.REASON_SUSPENDED if placement.suspend else c.REASON_RESUMED,
            f"{'suspended' if placement.suspend else 'resumed'} Job {view.name}",
        )

    def view(
        self,
        ref: StageRef,
        run: GroupRun,
        tally: Tally,
        state: str,
        previous: Mapping[str, Any],
    ) -> StageView:
        jv = run.view
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
        named = jv is not None or state in (c.STAGE_RUNNING, c.STAGE_FAILED)
        return StageView(
            kind=ref.kind,
            stage_id=ref.stage_id,
            uri=ref.uri(run.work.job.output_uri),
            job=run.work.name if named else None,
            state=state,
            tally=tally,
            running=running_shards(jv, tally) if state not in c.STAGE_DONE else 0,
            failed=failed_shards(jv, tally, run.order),
            started_at=started,
            finished_at=finished,
        )

    # --- status and events ------------------------------------------------------------------

    def write_counts(
        self, views: Sequence[StageView], phase: str, previous: Mapping[str, Any]
    ) -> None:
        """Stages, totals, shards, throughput and ETA, and the counting checkpoint."""
        self.status["checkpoint"] = {v.stage_id: v.tally.encode() for v in views}
        self.status["stages"] = [stage_entry(v) for v in views]
        self.status.update(totals(views))
        running = next((v for v in views if v.state not in c.STAGE_DONE), views[-1])
        self.status["shards"] = current_shards(running)
        old_baselines = previous.get("baseline") or {}
        if phase in (c.FILTERING, c.REWRITING):
            self.status.update(rates(running, self.now, old_baselines.get(running.stage_id)))
        self.status["baseline"] = {
            v.stage_id: old_baselines.get(v.stage_id)
            or {
                "shards": v.tally.count,
                "records": v.tally.stats.records_in,
                "generated": v.tally.stats.generated_tokens,
            }
            for v in views
            if v.state == c.STAGE_RUNNING
        }

    def stop_old_jobs(self) -> int:
        """Delete every Job of this RewriteJob (a rerun must not start while an old pod can
        still commit); returns how many are still there."""
        existing = self.cluster.list_jobs(self.res.namespace, self.res.name)
        for view in existing:
            if not view.deleting:
                self.cluster.delete_job(self.res.namespace, view.name)
        return len(existing)

    def delete_stale(self, existing: Mapping[str, JobView], wanted: set[str]) -> None:
        for name in sorted(n for n in set(existing) - wanted if not existing[n].deleting):
            self.cluster.delete_job(self.res.namespace, name)
            self.emit(
                "Normal",
                c.REASON_STALE_JOB_DELETED,
                f"deleted Job {name}: its stage is no longer part of the spec",
            )

    def ensure_manifest(
        self, job: Job, storage: JobStorage, last: StageRef, view: StageView
    ) -> str | None:
        """The final dataset manifest, streamed over ticks: its URI once written, None while
        part lists remain (the position is kept in status.manifest)."""
        uri = manifest_uri(job.output_uri, last)
        if self.old.get("manifestUri") == uri:
            return uri
        owner = f"{self.res.namespace}/{self.res.name}"
        progress = ManifestProgress.from_status(self.old.get("manifest"), last.stage_id)
        progress, written = write_manifest_step(
            storage, owner, job.output_uri, last, view.tally.total, progress, self.deadline
        )
        self.status["manifest"] = progress.to_status()
        return written

    def ensure_card(
        self,
        document: JobDocument,
        storage: JobStorage,
        views: Sequence[StageView],
        succeeded: tuple[str, str, str],
    ) -> tuple[str, str, str]:
        """The dataset card, summed over ticks once the manifest is written (the position is
        kept in status.card): the outcome to report, which names the card once written."""
        uri = card_uri(document.job.output_uri)
        last = views[-1]
        at = position(self.old.get("card"), last.stage_id)
        if self.old.get("cardUri") != uri or at.next < last.tally.total or not at.listing_done:
            at, written = write_card_step(storage, document, views, at, self.deadline)
            if written is None:
                self.status["card"] = position_status(at, last.stage_id)
                return (
                    c.REWRITING if document.job.rewrite else c.FILTERING,
                    c.REASON_WRITING_CARD,
                    f"writing the dataset card: {at.next} of {last.tally.total} shards, "
                    f"{at.listed} objects listed",
                )
        self.status["card"] = position_status(at, last.stage_id)
        self.status["cardUri"] = uri
        phase, reason, message = succeeded
        return phase, reason, f"{message}; dataset card at {uri}"

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

    def secret_labels(self, name: str) -> dict[str, str] | None:
        return self.cluster.read_secret_labels(self.res.namespace, name)

    def past_deadline(self) -> bool:
        """The tick's budget ran out: some markers may have been left unread."""
        return self.deadline is not None and time.monotonic() > self.deadline

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
        ) + quarantine_conditions(
            self.status.get("quarantined") or {},
            self.res.generation,
            self.old.get("conditions") or [],
            self.now,
        )
        if not self.reached_stages:
            # An early stop (bad spec, missing Secret) keeps the counts of the last full pass.
            for key, value in self.old.items():
                if key not in self.status and key not in ("kopf", "dryRun"):
                    self.status[key] = value
        return TickResult(self.status, self.events)


def admission_message(label: str, job: str, queue: str, workload: WorkloadView | None) -> str:
    """What a stage waiting for Kueue says: its Workload and why Kueue has not admitted it."""
    waiting = f"{label}: Job {job} waiting for admission by Kueue queue {queue}"
    if workload is None:
        return f"{waiting} (no Workload yet)"
    reason = f": {workload.message}" if workload.message else ""
    return f"{waiting}, workload {workload.name}{reason}"


def running_shards(jv: JobView | None, tally: Tally) -> int:
    """Shards in the hands of running pods (a rewrite pod holds a block of them)."""
    if jv is None:
        return 0
    return min(jv.active * jv.shards_per_index, tally.total - tally.count)


def failed_shards(jv: JobView | None, tally: Tally, order: list[int] | None = None) -> int:
    """Uncommitted shards of the Job's failed indexes."""
    if jv is None:
        return 0
    indexes = parse_indexes(jv.failed_indexes)
    failed = shards_of_indexes(indexes, jv.shards_per_index, tally.total, order)
    return len(tally.missing(failed))


def needs_scan(jv: JobView | None, checkpointed: bool, tally: Tally) -> bool:
    """Whether a tick also walks the stage's marker listing (one page after the cursor).

    While the stage's Job runs, its completed indexes name every newly committed shard, so
    the listing is only walked when no running Job speaks for the stage (none exists, e.g.
    outputs of an earlier run, or it finished), when the stage is first seen (no checkpoint
    yet), and until a walk that has started reaches the end of the listing.
    """
    return jv is None or jv.finished is not None or not checkpointed or tally.cursor >= 0


def reconcile(
    resource: Resource,
    cluster: Cluster,
    storage_for: StorageFactory,
    now: dt.datetime | None = None,
    budget: float | None = None,
    policy: TrustPolicy | None = None,
) -> TickResult:
    return Tick(resource, cluster, storage_for, now, budget, policy).run()
