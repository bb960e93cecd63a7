"""The dedup stage's settings and the shape of its steps, without its array code.

The job parser (every `Job` carries `spec.dedup`) and the operator (which builds one Job per
step) need what a duplicate is and how many units each step has, but not NumPy or MinHash,
which only the filter image carries; those live in `palimpsest.dedup` (the steps' functions)
and `palimpsest.dedupstage` (the steps under the commit protocol).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from palimpsest.identity import StageRef
from palimpsest.stages.decontam import NUM_BANDS
from palimpsest.stages.registry import STAGES, Runner

COLUMNS: Final = NUM_BANDS + 1
"""Column 0 is the exact hash, columns 1..NUM_BANDS the LSH bands."""

SIGNATURES: Final = "signatures"
BUCKETS: Final = "buckets"
CLUSTERS: Final = "clusters"
FILTER: Final = "filter"
STEPS: Final = (SIGNATURES, BUCKETS, CLUSTERS, FILTER)
"""The steps in the order they run; each starts once the one before committed every unit."""
STEPS_DIR: Final = "_steps"


@dataclass(frozen=True)
class DedupSettings:
    """What a duplicate is, and how the work is cut (`palimpsest dedup`, `spec.dedup`)."""

    threshold: float = 0.8
    """Estimated Jaccard similarity of 5-token shingle sets at or above which two records
    are near duplicates (the published setting)."""
    exact: bool = True
    """Records with the same normalized text are duplicates (column 0)."""
    near: bool = True
    """Records whose estimated similarity reaches `threshold` are duplicates (the bands)."""
    column_ranges: int = 4
    """Indexes of the bucket step: the columns are cut into this many contiguous ranges, one
    per pod. A range confirms its candidates knowing the pairs it found before, so the cut
    can change which borderline pairs are confirmed: it decides the output."""
    records_per_shard: int = 100_000
    """`palimpsest dedup` only: records per shard of its signature and filter steps (results
    do not depend on it; a RewriteJob shards by spec.sharding)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold: must be within (0, 1], got {self.threshold}")
        if not (self.exact or self.near):
            raise ValueError("exact: exact and near cannot both be false (nothing would match)")
        if not 1 <= self.column_ranges <= COLUMNS:
            raise ValueError(f"columnRanges: must be within 1..{COLUMNS}, got {self.column_ranges}")
        if self.records_per_shard < 1:
            raise ValueError(f"records_per_shard: must be >= 1, got {self.records_per_shard}")

    @property
    def columns(self) -> list[int]:
        """The columns compared: the exact hash, the bands, or both."""
        return ([0] if self.exact else []) + (list(range(1, COLUMNS)) if self.near else [])

    def ranges(self) -> list[list[int]]:
        """The compared columns cut into at most `column_ranges` contiguous, near-equal ranges."""
        columns = self.columns
        count = min(self.column_ranges, len(columns))
        size, extra = divmod(len(columns), count)
        cuts = [n * size + min(n, extra) for n in range(count + 1)]
        return [columns[cuts[n] : cuts[n + 1]] for n in range(count)]

    def identity(self) -> dict[str, object]:
        """The settings that decide the dedup stage's output."""
        return {
            "threshold": self.threshold,
            "exact": self.exact,
            "near": self.near,
            "column_ranges": self.column_ranges,
        }


def step_ref(ref: StageRef, step: str) -> StageRef:
    """The markers of one step: the stage's own for the filter, else a folder of the stage's."""
    if step == FILTER:
        return ref
    folder = f"{ref.stage_id}/{STEPS_DIR}/{step}"
    return StageRef(ref.kind, f"{ref.stage_id}-{step}", ref.previous, folder)


def with_steps(refs: Sequence[StageRef]) -> list[StageRef]:
    """Every marker folder of the stages: each stage's own, and before a stage that runs in
    steps, its steps' (what a rerun must forget, so no step reuses results of old inputs)."""
    found: list[StageRef] = []
    for ref in refs:
        if STAGES[ref.kind].runner is Runner.CORPUS:
            found += [step_ref(ref, step) for step in STEPS if step != FILTER]
        found.append(ref)
    return found


def step_units(step: str, shards: int, settings: DedupSettings) -> int:
    """How many units (Job indexes) a step has over a plan of `shards` shards."""
    if step in (SIGNATURES, FILTER):
        return shards
    if step == BUCKETS:
        return len(settings.ranges())
    if step == CLUSTERS:
        return 1
    raise ValueError(f"--step: unknown dedup step {step!r} (known: {', '.join(STEPS)})")
