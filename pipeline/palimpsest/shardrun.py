"""Run one shard of the filter stage under the commit protocol (see `commit`).

A committed shard is skipped at once; otherwise the shard's records stream through the filter
into this attempt's parts, and the attempt commits by creating the shard's marker. Anything
that goes wrong before the commit leaves no marker, so nothing of the attempt counts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from palimpsest.commit import ShardOutput, read_marker
from palimpsest.filtering import CodeFilter, FilterSettings
from palimpsest.identity import FILTER_TOOLS, pinned_tools, stage_id
from palimpsest.lint.pool import LintPool
from palimpsest.plan import ShardPlan
from palimpsest.stats import Stats
from palimpsest.storage import Store, join

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardResult:
    shard: int
    committed: bool  # this attempt's marker is the shard's marker
    already_done: bool  # the shard was committed before this attempt started
    stats: Stats


def filter_stage_id(plan_id: str, settings: FilterSettings) -> str:
    """The filter stage's id: its plan, the settings that decide results, the pinned tools."""
    return stage_id("filter", plan_id, settings.identity(), None, pinned_tools(FILTER_TOOLS))


def run_filter_shard(
    store: Store,
    plan: ShardPlan,
    index: int,
    output_uri: str,
    settings: FilterSettings,
    pool: LintPool,
    progress: Callable[[int], None] | None = None,
) -> ShardResult:
    """Filter shard `index` of `plan`; `progress` is called with 1 per finished record."""
    if not 0 <= index < len(plan.shards):
        raise IndexError(f"shard index {index} outside the plan's 0..{len(plan.shards) - 1}")
    sid = filter_stage_id(plan.plan_id, settings)
    stage_uri = join(output_uri, sid)
    existing = read_marker(store, stage_uri, index)
    if existing is not None:
        log.info("shard %d of %s already committed by %s", index, sid, existing.attempt)
        return ShardResult(index, False, True, existing.stats)
    out = ShardOutput(store, stage_uri, sid, index)
    stats = Stats()
    try:
        CodeFilter(settings, pool).run(
            plan.shards[index].read(store), out.write, out.write_reject, stats, progress
        )
    except BaseException:
        out.abort()
        raise
    won = out.commit(stats)
    if not won:
        log.warning("shard %d of %s was committed by another attempt; discarded ours", index, sid)
        winner = read_marker(store, stage_uri, index)
        return ShardResult(index, False, True, winner.stats if winner else stats)
    return ShardResult(index, True, False, stats)
