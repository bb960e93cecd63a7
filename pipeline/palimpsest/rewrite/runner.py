"""The rewrite worker's loop: one stream of requests over a block of shards, committed per shard.

Why it is shaped this way:
- The engine batches whatever is in flight, so the runner keeps up to `max_in_flight` records
  in flight at all times: one asyncio task per record, admitted by a semaphore, walking the
  record through the stages in order (a record's SCOR request goes out as soon as its SGCR
  answer arrives). The feeder moves on to the next shard as soon as a shard's input is
  read, so the engine never drains at a shard boundary, and the model is loaded once per
  block of shards.
- Each stage of each shard commits on its own, under the commit protocol of `commit`, as
  soon as its last record is done: stage k of a shard commits after stage k-1 of that shard
  (its input is then complete) and when no record of the shard is in flight in stage k.
- Progress is checkpointed in chunks (see `checkpoint`); a new attempt takes the earlier
  attempts' chunks and skips the records they hold, stage by stage. A stage is checkpointed
  only after the stages before it, so every key a later stage holds is also held upstream.
- Storage writes (part uploads, checkpoints, markers) run on threads, one stage-shard's in
  order, so a slow S3 call never stalls the loop that keeps the engine fed; the bookkeeping
  they depend on (which parts, which keys) is done on the loop before they start.
- A bad answer, an over-long prompt or a truncated answer is a counted reject; an
  `EngineDeadError` cancels everything and propagates (the worker exits non-zero and the
  Job retries the index, which resumes from the checkpoints).

Counting happens here, once per record and stage, into `Stats`; tokens are the engine's own
counts of every request it served, whatever became of the answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from palimpsest.commit import (
    OUTPUT_KIND,
    PART_FORMAT,
    REJECTS_KIND,
    Describe,
    ShardOutput,
    read_committed,
    read_marker,
)
from palimpsest.engines.base import Engine, EngineDeadError, GenerationResult
from palimpsest.identity import StageRef
from palimpsest.recordkeys import record_key
from palimpsest.records import RawRecord, Record
from palimpsest.rewrite.checkpoint import (
    Checkpoint,
    Resumed,
    delete_checkpoints,
    load_checkpoints,
    resume,
    write_checkpoint,
)
from palimpsest.stages.llm import RewriteStage, Verdict
from palimpsest.stats import Stats
from palimpsest.storage import Store

log = logging.getLogger(__name__)

InputFn = Callable[[int], Iterable[RawRecord]]
"""A shard index -> the records the first stage reads for that shard, keyed (see
`recordkeys.assign_keys`; `stagerun.shard_inputs` gives such a function)."""


@dataclass(frozen=True)
class RunnerSettings:
    """How the runner paces itself; none of this changes results (so none is in stage ids)."""

    checkpoint_records: int = 256
    """Records finished in one stage of one shard between chunk checkpoints. Smaller loses less
    work on a kill, at the price of more (small) parts and checkpoint objects."""
    checkpoint_seconds: float = 300.0
    """Longest time between checkpoints of a stage of a shard that has unsaved records."""
    max_in_flight: int | None = None
    """Records in flight at once; None takes the engine's `max_in_flight`, so the engine's
    own queue stays full without piling up more tasks than it can serve."""

    def __post_init__(self) -> None:
        if self.checkpoint_records < 1:
            raise ValueError("checkpoint_records: must be >= 1")
        if self.checkpoint_seconds <= 0:
            raise ValueError("checkpoint_seconds: must be > 0")
        if self.max_in_flight is not None and self.max_in_flight < 1:
            raise ValueError("max_in_flight: must be >= 1")


@dataclass(frozen=True)
class StagePlan:
    """A stage to run: its id and output folder (`ref`) and what it does (`stage`)."""

    ref: StageRef
    stage: RewriteStage
    describe: Describe | None = None
    """The dataset-card statistics its commits carry (the job's final stage only)."""
    output_format: str = PART_FORMAT
    """The suffix of its output parts (`spec.output.format` for the job's final stage)."""


@dataclass
class StageReport:
    """How one stage of one shard ended in this run."""

    stage_id: str
    committed: bool = False
    """This attempt's marker is the shard's marker."""
    already_done: bool = False
    """The stage was committed before this attempt looked."""
    stats: dict[str, Any] = field(default_factory=dict)


class LostCommitError(RuntimeError):
    """Another attempt committed a stage of a shard this attempt was still feeding downstream
    stages from; the worker exits non-zero and the retry starts from the winner's outputs."""


class MissingInputError(RuntimeError):
    """The stage this worker reads from has not committed a shard yet."""


def count_request(stats: Stats, result: GenerationResult | None) -> None:
    """Token accounting: every request the engine served, answer kept or not."""
    if result is None:
        return
    stats.requests += 1
    stats.prompt_tokens += result.prompt_tokens
    stats.generated_tokens += result.generated_tokens


class _StageShard:
    """One stage of one shard in this attempt: output, stats, checkpoints and progress."""

    def __init__(
        self, store: Store, plan: StagePlan, output_uri: str, shard: int, resumed: Resumed
    ) -> None:
        self.plan = plan
        self.shard = shard
        self.store = store
        self.stage_uri = plan.ref.uri(output_uri)
        self.out = ShardOutput(
            store, self.stage_uri, plan.ref.stage_id, shard, output_format=plan.output_format
        )
        self.resumed = resumed
        self.saved = Stats()  # this attempt's checkpointed records
        self.chunk = Stats()  # records since the last checkpoint
        self.chunk_keys: dict[str, list[str]] = {OUTPUT_KIND: [], REJECTS_KIND: []}
        self.seq = 0
        self.last_checkpoint = time.monotonic()
        self.pending = 0  # records admitted to this stage and not finished in it
        self.closed = False  # no more records will be admitted
        self.committed = False
        self.aborted = False  # this attempt gave the shard up: nothing more is written
        self.committing = False  # the commit is under way (its writes run on a thread)
        self.io = asyncio.Lock()  # this stage-shard's storage writes, in order

    @property
    def unsaved(self) -> int:
        return self.chunk.records_in

    def finish(
        self, key: str, record: Record, result: GenerationResult | None, verdict: Verdict
    ) -> None:
        if self.aborted:
            return
        count_request(self.chunk, result)
        score = verdict.meta.get("score")
        if isinstance(score, int | float):
            self.chunk.add_score(float(score))
        if verdict.reason is None:
            self.chunk.keep()
            self.out.write(record)
            self.chunk_keys[OUTPUT_KIND].append(key)
        else:
            self.chunk.reject(verdict.reason)
            self.out.write_reject(record)
            self.chunk_keys[REJECTS_KIND].append(key)

    def checkpoint(self, engine_share: tuple[float, float]) -> Callable[[], None] | None:
        """Close the chunk's parts and describe them in an immutable checkpoint object; no
        storage I/O here: returns what uploads the parts and then writes the checkpoint (to
        run off the event loop, in order with the stage's other writes)."""
        if self.aborted:
            return None
        self.chunk.seconds += engine_share[0]
        self.chunk.engine_seconds += engine_share[1]
        parts, uploads = self.out.roll_local()
        keys = {kind: [self.chunk_keys[kind]] for kind in parts}
        checkpoint = Checkpoint(
            self.plan.ref.stage_id,
            self.shard,
            self.out.attempt,
            self.seq,
            parts,
            keys,
            self.chunk,
        )
        self.seq += 1
        self.saved.merge(self.chunk)
        self.chunk = Stats()
        self.chunk_keys = {OUTPUT_KIND: [], REJECTS_KIND: []}
        self.last_checkpoint = time.monotonic()

        def save() -> None:
            for upload in uploads:
                upload()
            write_checkpoint(self.store, self.stage_uri, checkpoint)

        return save

    async def write(self, action: Callable[[], Any]) -> Any:
        """Run a storage action on a thread, one at a time per stage-shard, in call order."""
        async with self.io:
            return await asyncio.to_thread(action)

    def commit(self, engine_share: tuple[float, float], gpus: int) -> tuple[bool, Stats]:
        stats = Stats()
        for part in (self.resumed.stats, self.saved, self.chunk):
            stats.merge(part)
        stats.seconds += engine_share[0]
        stats.engine_seconds += engine_share[1]
        stats.gpus = gpus
        won = self.out.commit(stats, self.resumed.parts, self.plan.describe)
        self.committed = True
        return won, stats

    def abort(self) -> None:
        # Records still in flight may finish after this; none of them may leave a checkpoint.
        self.aborted = True
        self.out.abort()
        delete_checkpoints(self.store, self.stage_uri, self.shard, self.out.attempt)


class RewriteRunner:
    """Runs a chain of rewrite stages over a block of shards on one started engine."""

    def __init__(
        self,
        engine: Engine,
        store: Store,
        output_uri: str,
        stages: Sequence[StagePlan],
        inputs: InputFn,
        id_field: str = "id",
        settings: RunnerSettings | None = None,
    ) -> None:
        if not stages:
            raise ValueError("stages: at least one rewrite stage is needed")
        self.engine = engine
        self.store = store
        self.output_uri = output_uri
        self.stages = tuple(stages)
        self.inputs = inputs
        self.id_field = id_field
        self.settings = settings or RunnerSettings()
        self.reports: dict[int, dict[str, StageReport]] = {}
        self._mark = (time.monotonic(), engine.engine_seconds)
        self._slots: asyncio.Semaphore | None = None

    async def run(self, shards: Sequence[int]) -> dict[int, dict[str, StageReport]]:
        """Rewrite the shards; returns per shard and stage kind how it ended."""
        bound = self.settings.max_in_flight or self.engine.max_in_flight
        self._slots = asyncio.Semaphore(bound)
        try:
            async with asyncio.TaskGroup() as group:
                for shard in shards:
                    await self._feed_shard(group, shard)
        except BaseExceptionGroup as failed:
            raise _main_error(failed) from failed
        return self.reports

    # -- feeding ---------------------------------------------------------------------------

    async def _feed_shard(self, group: asyncio.TaskGroup, shard: int) -> None:
        states = self._open_shard(shard)
        first = next((i for i, s in enumerate(states) if s is not None), None)
        if first is None:
            return
        bridges = self._bridges(states, first)
        for raw in self._source(shard, first):
            key = record_key(raw, self.id_field)
            start = self._start_point(states, first, key, raw, bridges)
            if start is None:
                continue
            assert self._slots is not None
            await self._slots.acquire()
            state = states[start[0]]
            assert state is not None
            state.pending += 1
            group.create_task(self._process(states, start[0], key, start[1]))
        head = states[first]
        assert head is not None
        head.closed = True
        await self._maybe_commit(states, first)

    def _open_shard(self, shard: int) -> list[_StageShard | None]:
        """One state per stage, None for stages already committed (in order: a committed
        stage is never after an uncommitted one)."""
        states: list[_StageShard | None] = []
        reports = self.reports.setdefault(shard, {})
        for plan in self.stages:
            marker = read_marker(self.store, plan.ref.uri(self.output_uri), shard)
            if marker is not None:
                reports[plan.ref.kind] = StageReport(
                    plan.ref.stage_id, False, True, marker.stats.to_dict()
                )
                states.append(None)
                continue
            resumed = resume(load_checkpoints(self.store, plan.ref.uri(self.output_uri), shard))
            if resumed.done:
                log.info(
                    "shard %d %s: resuming with %d records from checkpoints",
                    shard,
                    plan.ref.kind,
                    len(resumed.done),
                )
            states.append(_StageShard(self.store, plan, self.output_uri, shard, resumed))
        return states

    def _source(self, shard: int, first: int) -> Iterable[RawRecord]:
        if first == 0:
            return self.inputs(shard)
        previous = self.stages[first - 1].ref
        marker = read_marker(self.store, previous.uri(self.output_uri), shard)
        if marker is None:
            raise MissingInputError(f"shard {shard}: {previous.stage_id} has no marker")
        return read_committed(self.store, marker)

    def _bridges(self, states: list[_StageShard | None], first: int) -> list[dict[str, Record]]:
        """Per stage, its checkpointed outputs that the next stage has not done yet."""
        bridges: list[dict[str, Record]] = [{} for _ in states]
        for s in range(first, len(states) - 1):
            state, after = states[s], states[s + 1]
            assert state is not None and after is not None
            wanted = {
                k
                for k, kind in state.resumed.done.items()
                if kind == OUTPUT_KIND and k not in after.resumed.done
            }
            bridges[s] = state.resumed.outputs(self.store, wanted) if wanted else {}
        return bridges

    def _start_point(
        self,
        states: list[_StageShard | None],
        first: int,
        key: str,
        raw: RawRecord,
        bridges: list[dict[str, Record]],
    ) -> tuple[int, RawRecord] | None:
        """Where a record resumes: the first stage that has not done it, with its input;
        None when it is finished (rejected on the way, or done by the last stage)."""
        current = raw
        for s in range(first, len(states)):
            state = states[s]
            assert state is not None
            kind = state.resumed.done.get(key)
            if kind is None:
                return s, current
            if kind == REJECTS_KIND or s == len(states) - 1:
                return None
            after = states[s + 1]
            assert after is not None
            if key in after.resumed.done:
                continue  # the next stage has it too: no need for this stage's output
            record = bridges[s].get(key)
            if record is None:
                raise RuntimeError(f"shard {state.shard}: checkpointed output of {key!r} missing")
            current = RawRecord(raw.source, raw.position, record)
        return None

    # -- one record ------------------------------------------------------------------------

    async def _process(
        self, states: list[_StageShard | None], start: int, key: str, raw: RawRecord
    ) -> None:
        try:
            for s in range(start, len(states)):
                state = states[s]
                assert state is not None
                kept = await self._one_stage(state, key, raw)
                if kept is not None and s + 1 < len(states):
                    after = states[s + 1]
                    assert after is not None
                    after.pending += 1
                state.pending -= 1
                await self._after_record(states, s)
                if kept is None:
                    return
                raw = RawRecord(raw.source, raw.position, kept)
        finally:
            assert self._slots is not None
            self._slots.release()

    async def _one_stage(self, state: _StageShard, key: str, raw: RawRecord) -> Record | None:
        """Run one stage on one record; the kept record, or None when rejected."""
        stage = state.plan.stage
        verdict = stage.precheck(raw)
        result: GenerationResult | None = None
        record = raw.record if raw.record is not None else _bad_item(raw)
        if self.id_field not in record:
            record = {**record, self.id_field: key}
        if verdict is None:
            result = await self.engine.generate(stage.request(key, record))
            verdict = stage.judge(result)
        if verdict.reason is None:
            assert result is not None
            kept = stage.output_record(record, result, verdict)
            state.finish(key, kept, result, verdict)
            return kept
        state.finish(key, stage.reject_record(record, result, verdict), result, verdict)
        return None

    # -- checkpoints and commits -----------------------------------------------------------

    async def _after_record(self, states: list[_StageShard | None], s: int) -> None:
        state = states[s]
        assert state is not None
        due = state.unsaved >= self.settings.checkpoint_records or (
            state.unsaved
            and time.monotonic() - state.last_checkpoint >= self.settings.checkpoint_seconds
        )
        if due and not (state.closed and state.pending == 0):  # else it commits right away
            for upstream in states[: s + 1]:
                if upstream is None or upstream.committed or upstream.committing:
                    continue
                if upstream.unsaved:
                    save = upstream.checkpoint(self._share())
                    if save is not None:
                        await upstream.write(save)
        await self._maybe_commit(states, s)

    async def _maybe_commit(self, states: list[_StageShard | None], s: int) -> None:
        state = states[s]
        if state is None or state.committed or state.committing or state.aborted:
            return
        if not state.closed or state.pending:
            return
        state.committing = True
        share, gpus = self._share(), self.engine.gpus
        won, stats = await state.write(lambda: state.commit(share, gpus))
        kind = state.plan.ref.kind
        report = StageReport(state.plan.ref.stage_id, won, not won, stats.to_dict())
        self.reports.setdefault(state.shard, {})[kind] = report
        log.info(
            "shard %d %s committed: %d kept, %d rejected, %d prompt + %d generated tokens",
            state.shard,
            kind,
            stats.kept,
            stats.rejected,
            stats.prompt_tokens,
            stats.generated_tokens,
        )
        if not won:
            downstream = [x for x in states[s + 1 :] if x is not None]
            for later in downstream:
                later.aborted = True  # no record finishing from now on leaves anything
                await later.write(later.abort)
            if downstream:
                raise LostCommitError(
                    f"shard {state.shard} {kind}: another attempt committed first; retry"
                )
            return
        if s + 1 < len(states):
            after = states[s + 1]
            assert after is not None
            after.closed = True
            await self._maybe_commit(states, s + 1)

    def _share(self) -> tuple[float, float]:
        """Wall and engine seconds since the last checkpoint or commit, charged to it, so the
        seconds of all markers and checkpoints of a pod add up to the pod's."""
        now, engine_now = time.monotonic(), self.engine.engine_seconds
        share = (now - self._mark[0], engine_now - self._mark[1])
        self._mark = (now, engine_now)
        return share


def _bad_item(raw: RawRecord) -> Record:
    return {"source": raw.source, "position": raw.position, "raw": raw.raw}


def _main_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error that decides how the run ends: a dead engine before anything else."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        else:
            leaves.append(exc)
    for exc in leaves:
        if isinstance(exc, EngineDeadError):
            return exc
    return leaves[0]
