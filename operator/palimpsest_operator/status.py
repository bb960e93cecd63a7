"""Pure assembly of a RewriteJob's status from what one tick observed.

The tick gathers facts (the plan, each stage's tally, each Job's counters); this module turns
them into the status the user reads: phase, conditions, per-stage counts, totals, throughput
and ETA. Nothing here touches the cluster or S3, so the status shape is tested on its own.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from palimpsest_operator import constants as c
from palimpsest_operator.progress import Tally, top_rejects


@dataclass(frozen=True)
class StageView:
    """One stage as this tick saw it."""

    kind: str
    stage_id: str
    uri: str
    job: str | None
    state: str
    tally: Tally
    running: int = 0
    failed: int = 0
    started_at: str | None = None
    finished_at: str | None = None


def iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


def stage_entry(view: StageView) -> dict[str, Any]:
    stats = view.tally.stats
    entry: dict[str, Any] = {
        "kind": view.kind,
        "id": view.stage_id,
        "uri": view.uri,
        "state": view.state,
        "shards": {
            "total": view.tally.total,
            "succeeded": view.tally.count,
            "failed": view.failed,
            "running": view.running,
        },
        "records": {"in": stats.records_in, "kept": stats.kept, "rejected": stats.rejected},
        "topRejects": top_rejects(stats),
        "tokens": {"prompt": stats.prompt_tokens, "generated": stats.generated_tokens},
        "gpuHours": round(view.tally.gpu_seconds / 3600, 4),
    }
    if view.job:
        entry["job"] = view.job
    if view.started_at:
        entry["startedAt"] = view.started_at
    if view.finished_at:
        entry["finishedAt"] = view.finished_at
    return entry


def totals(views: Sequence[StageView]) -> dict[str, Any]:
    """Job-wide counts: records in (first stage), kept (last stage), tokens, GPU-hours."""
    if not views:
        return {}
    first, last = views[0].tally.stats, views[-1].tally.stats
    done = sum(v.tally.count for v in views)
    planned = sum(v.tally.total for v in views)
    return {
        "records": {
            "in": first.records_in,
            "kept": last.kept,
            "rejected": sum(v.tally.stats.rejected for v in views),
        },
        "tokens": {
            "prompt": sum(v.tally.stats.prompt_tokens for v in views),
            "generated": sum(v.tally.stats.generated_tokens for v in views),
        },
        "gpuHours": round(sum(v.tally.gpu_seconds for v in views) / 3600, 4),
        "progress": f"{(100 * done // planned) if planned else 100}%",
    }


def current_shards(view: StageView) -> dict[str, int]:
    return {
        "total": view.tally.total,
        "succeeded": view.tally.count,
        "failed": view.failed,
        "running": view.running,
    }


def rates(
    view: StageView, now: dt.datetime, baseline: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Throughput of the running stage since it started, and the ETA of its remaining shards.

    `baseline` is the stage's counts when it started (shards already committed by an earlier
    run are not throughput of this one).
    """
    started = parse_iso(view.started_at)
    if started is None:
        return {}
    elapsed = max((now - started).total_seconds(), 1.0)
    base = baseline or {}
    stats = view.tally.stats
    shards = view.tally.count - int(base.get("shards", 0))
    out: dict[str, Any] = {
        "throughput": {
            "recordsPerSecond": round(
                (stats.records_in - int(base.get("records", 0))) / elapsed, 3
            ),
            "generatedTokensPerSecond": round(
                (stats.generated_tokens - int(base.get("generated", 0))) / elapsed, 3
            ),
        }
    }
    if shards > 0:
        remaining = view.tally.total - view.tally.count
        out["etaSeconds"] = int(remaining * elapsed / shards)
    return out


def conditions(
    phase: str,
    reason: str,
    message: str,
    generation: int,
    previous: Sequence[Mapping[str, Any]],
    now: dt.datetime,
) -> list[dict[str, Any]]:
    """The standard conditions for a phase; a condition keeps its transition time while its
    status does not change."""
    wanted = {
        c.COND_READY: phase == c.SUCCEEDED,
        c.COND_PROGRESSING: phase in (c.PENDING, c.FILTERING, c.REWRITING),
        c.COND_FAILED: phase == c.FAILED,
        c.COND_SUSPENDED: phase == c.SUSPENDED,
        c.COND_WAITING_FOR_ADMISSION: phase == c.WAITING_FOR_ADMISSION,
    }
    before = {str(p.get("type")): p for p in previous}
    out = []
    for kind, value in wanted.items():
        status = "True" if value else "False"
        old = before.get(kind, {})
        changed = old.get("status") != status
        out.append(
            {
                "type": kind,
                "status": status,
                "reason": reason if value else phase,
                "message": message if value else "",
                "observedGeneration": generation,
                "lastTransitionTime": iso(now)
                if changed
                else old.get("lastTransitionTime", iso(now)),
            }
        )
    return out


def quarantine_conditions(
    quarantined: Mapping[str, Mapping[str, Any]],
    generation: int,
    previous: Sequence[Mapping[str, Any]],
    now: dt.datetime,
) -> list[dict[str, Any]]:
    """A MarkersQuarantined condition while shards whose marker was unreadable (and moved
    aside) have not been committed again; it keeps its transition time while it holds."""
    if not quarantined:
        return []
    since = next(
        (
            p.get("lastTransitionTime")
            for p in previous
            if p.get("type") == c.COND_MARKERS_QUARANTINED
        ),
        None,
    )
    named = "; ".join(f"{stage}: shards {e['shards']}" for stage, e in quarantined.items())
    return [
        {
            "type": c.COND_MARKERS_QUARANTINED,
            "status": "True",
            "reason": c.REASON_MARKER_QUARANTINED,
            "message": f"unreadable markers moved aside, their shards run again ({named})"[:1000],
            "observedGeneration": generation,
            "lastTransitionTime": since or iso(now),
        }
    ]


def degraded(status: Mapping[str, Any], message: str, now: dt.datetime) -> dict[str, Any]:
    """The status after a tick that failed on S3 or the API: everything as it was, the
    message saying why, and a Degraded condition (dropped by the next successful tick)."""
    kept = [p for p in status.get("conditions") or [] if p.get("type") != c.COND_DEGRADED]
    old: Mapping[str, Any] = next(
        (p for p in status.get("conditions") or [] if p.get("type") == c.COND_DEGRADED), {}
    )
    condition = {
        "type": c.COND_DEGRADED,
        "status": "True",
        "reason": c.REASON_TEMPORARY_ERROR,
        "message": message,
        "observedGeneration": status.get("observedGeneration", 0),
        "lastTransitionTime": old.get("lastTransitionTime") or iso(now),
    }
    return {**status, "message": message, "conditions": [*kept, condition]}


def merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch turning `old` status into `new`: keys gone from `new` become None.

    Nested mappings are patched key by key (so the checkpoint of a stage that no longer
    exists is removed); lists and scalars are replaced whole.
    """
    patch: dict[str, Any] = {}
    for key in old:
        if key not in new and key != "kopf":
            patch[key] = None
    for key, value in new.items():
        previous = old.get(key)
        if isinstance(value, Mapping) and isinstance(previous, Mapping):
            nested = merge_patch(previous, value)
            if nested:
                patch[key] = nested
        elif previous != value:
            patch[key] = value
    return patch
