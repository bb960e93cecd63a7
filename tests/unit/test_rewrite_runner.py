"""The rewrite runner on a fake in-process engine: streaming, commits, checkpoints, resume."""

from __future__ import annotations

import asyncio
import json
import zlib
from collections.abc import Iterable
from pathlib import Path

import pytest

from palimpsest.commit import REJECTS_KIND, Part, read_committed, read_marker
from palimpsest.document import JobDocument, job_prompts
from palimpsest.engines import (
    Completion,
    Engine,
    EngineDeadError,
    EngineSettings,
    GenerationRequest,
    GenerationResult,
)
from palimpsest.job import InputSpec, Job, RewriteSettings
from palimpsest.recordfields import KEY_FIELD
from palimpsest.recordkeys import assign_keys
from palimpsest.records import RawRecord
from palimpsest.rewrite.checkpoint import Checkpoint, load_checkpoints, resume
from palimpsest.rewrite.runner import LostCommitError, RewriteRunner, RunnerSettings, StagePlan
from palimpsest.stagerun import llm_plans
from palimpsest.stats import Stats
from palimpsest.storage import LocalStore

PROMPT_TOKENS, GENERATED_TOKENS = 40, 12


class FakeEngine(Engine):
    """Answers like a model that follows the prompts; may die after a number of requests."""

    def __init__(self, max_in_flight: int = 3, die_after: int | None = None) -> None:
        self.max_in_flight = max_in_flight
        self.die_after = die_after
        self.log: list[tuple[str, str]] = []  # ("start" | "end", request id)
        self.in_flight = 0
        self.most_in_flight = 0

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    @property
    def engine_seconds(self) -> float:
        return 1.0

    @property
    def gpus(self) -> int:
        return 1

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        if self.die_after is not None and len(self.log) >= 2 * self.die_after:
            raise EngineDeadError("fake engine died")
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self.log.append(("start", request.request_id))
        text = request.messages[-1].content
        await asyncio.sleep(latency(request.request_id))
        self.in_flight -= 1
        self.log.append(("end", request.request_id))
        if request.request_id.startswith("sgcr:"):
            answer = f"Score: 5\nSuggestions:\n- names\n\n```python\n{text}# sgcr\n```"
        else:
            answer = f"```python\n{text}# scor\n```"
        return GenerationResult(
            request.request_id, PROMPT_TOKENS, (Completion(answer, "stop", GENERATED_TOKENS),)
        )

    @property
    def requests(self) -> list[str]:
        return [rid for what, rid in self.log if what == "start"]


def latency(request_id: str) -> float:
    """A few milliseconds per request, the same in every run; shard 0's last record is slow, so
    a runner that drains a shard before feeding the next one is caught whatever the timing."""
    if request_id.endswith('"a6"'):
        return 0.05
    return 0.001 * (1 + zlib.crc32(request_id.encode()) % 5)


def code(i: int) -> str:
    return f"def value_{i}(scale: int) -> int:\n    return scale * {i} + {i * 3}\n"


SHARDS = {0: [f"a{i}" for i in range(7)], 1: [f"b{i}" for i in range(5)]}


def inputs(shard: int) -> Iterable[RawRecord]:
    for position, rid in enumerate(SHARDS[shard]):
        yield RawRecord("mem", position, {"id": rid, "text": code(position)})


def plans(output_format: str = "jsonl") -> list[StagePlan]:
    engine = EngineSettings(type="openai", model="fake", base_url="http://unused/v1")
    job = Job(
        name="runner",
        recipe="swallowcode",
        stages=("sgcr", "scor"),
        input=InputSpec(uri="/in"),
        output_uri="/out",
        rewrite=RewriteSettings(engine=engine),
        output_format=output_format,
    )
    document = JobDocument(job, "plan-1", "/out/_plans/plan-1.json", job_prompts(job))
    return llm_plans(document, ("sgcr", "scor"), LocalStore())


def run(
    engine: FakeEngine, output: str, checkpoint_records: int = 2, output_format: str = "jsonl"
) -> None:
    runner = RewriteRunner(
        engine,
        LocalStore(),
        output,
        plans(output_format),
        inputs,
        settings=RunnerSettings(checkpoint_records=checkpoint_records),
    )
    asyncio.run(runner.run([0, 1]))


def committed_ids(output: str, kind: str, output_format: str = "jsonl") -> list[str]:
    store = LocalStore()
    (ref,) = [p.ref for p in plans(output_format) if p.ref.kind == kind]
    ids = []
    for shard in SHARDS:
        marker = read_marker(store, ref.uri(output), shard)
        assert marker is not None
        for part_kind in ("output", REJECTS_KIND):
            ids += [
                str(r.record["id"]) for r in read_committed(store, marker, part_kind) if r.record
            ]
    return sorted(ids)


def test_stream_commits_each_stage_of_each_shard(tmp_path: Path) -> None:
    engine = FakeEngine(max_in_flight=3)
    output = str(tmp_path / "out")
    run(engine, output)
    everything = sorted(SHARDS[0] + SHARDS[1])
    assert committed_ids(output, "sgcr") == everything
    assert committed_ids(output, "scor") == everything
    assert engine.most_in_flight <= 3
    requests = engine.requests
    # A record's SCOR goes out before every SGCR is sent, and shard 1 starts before shard 0's
    # last answer: one stream, no drain at stage or shard boundaries.
    first_scor = min(i for i, r in enumerate(requests) if r.startswith("scor:"))
    last_sgcr = max(i for i, r in enumerate(requests) if r.startswith("sgcr:"))
    assert first_scor < last_sgcr
    ends = [rid for what, rid in engine.log if what == "end"]
    first_b = engine.log.index(("start", 'sgcr:"b0"'))
    last_a_end = max(engine.log.index(("end", r)) for r in ends if r.endswith(':"a6"'))
    assert first_b < last_a_end
    store = LocalStore()
    for plan in plans():
        marker = read_marker(store, plan.ref.uri(output), 0)
        assert marker is not None
        stats = marker.stats
        assert stats.requests == 7
        assert stats.prompt_tokens == 7 * PROMPT_TOKENS
        assert stats.generated_tokens == 7 * GENERATED_TOKENS
        assert stats.gpus == 1


@pytest.mark.parametrize("output_format", ["jsonl", "parquet"])
def test_dead_engine_then_resume_without_regenerating(tmp_path: Path, output_format: str) -> None:
    output = str(tmp_path / "out")
    dying = FakeEngine(max_in_flight=2, die_after=9)
    with pytest.raises(EngineDeadError):
        run(dying, output, output_format=output_format)
    store = LocalStore()
    saved = {}
    for plan in plans(output_format):
        saved[plan.ref.kind] = sum(
            len(resume(load_checkpoints(store, plan.ref.uri(output), s)).done) for s in SHARDS
        )
    assert saved["sgcr"] > 0 and saved["scor"] > 0
    healthy = FakeEngine(max_in_flight=2)
    run(healthy, output, output_format=output_format)
    total = len(SHARDS[0]) + len(SHARDS[1])
    assert len(healthy.requests) == (total - saved["sgcr"]) + (total - saved["scor"])
    everything = sorted(SHARDS[0] + SHARDS[1])
    assert committed_ids(output, "sgcr", output_format) == everything
    assert committed_ids(output, "scor", output_format) == everything
    # Tokens in the markers cover every record once, checkpointed ones included; so do the
    # final stage's card statistics, and its parts are in the job's output format.
    texts = 0
    for plan in plans(output_format):
        tokens = 0
        for shard in SHARDS:
            marker = read_marker(store, plan.ref.uri(output), shard)
            assert marker is not None
            tokens += marker.stats.prompt_tokens
            if plan.ref.kind == "scor":
                assert marker.card is not None and marker.card["records"] == marker.stats.kept
                texts += marker.card["records"]
                suffix = "parquet" if output_format == "parquet" else "jsonl.zst"
                assert all(p.uri.endswith(suffix) for p in marker.parts["output"])
                assert all(Path(p.uri).is_file() for ps in marker.parts.values() for p in ps)
            else:
                assert marker.card is None
        assert tokens == total * PROMPT_TOKENS
    assert texts == total


HOSTILE_IDS: list[object] = [None, 1.5, True, 1, "1", "x#1", "x", "x", [1, 2], {"a": 1}]


def hostile(shard: int) -> Iterable[RawRecord]:
    """Ids of every JSON type, repeats, a '#'-suffixed id, and a record without one."""
    for position, rid in enumerate(HOSTILE_IDS):
        yield RawRecord("mem", position, {"id": rid, "text": code(position)})
    yield RawRecord("mem", len(HOSTILE_IDS), {"text": code(99)})


def test_hostile_ids_resume_without_duplicates_or_losses(tmp_path: Path) -> None:
    output = str(tmp_path / "out")
    total = len(HOSTILE_IDS) + 1
    for engine in (FakeEngine(max_in_flight=2, die_after=7), FakeEngine(max_in_flight=2)):
        runner = RewriteRunner(
            engine,
            LocalStore(),
            output,
            plans(),
            lambda shard: assign_keys(hostile(shard), "id"),
            settings=RunnerSettings(checkpoint_records=1),
        )
        try:
            asyncio.run(runner.run([0]))
        except EngineDeadError:
            continue
    store = LocalStore()
    for plan in plans():
        marker = read_marker(store, plan.ref.uri(output), 0)
        assert marker is not None, plan.ref.kind
        assert marker.stats.records_in == total, plan.ref.kind
        records = [r.record for r in read_committed(store, marker) if r.record]
        keys = [r[KEY_FIELD] for r in records]
        assert len(keys) == len(set(keys)) == total
        assert sorted(map(repr, (r.get("id") for r in records))) == sorted(
            map(repr, [*HOSTILE_IDS, "@mem:10"])
        )


def test_rerun_of_committed_block_sends_nothing(tmp_path: Path) -> None:
    output = str(tmp_path / "out")
    run(FakeEngine(), output)
    again = FakeEngine()
    run(again, output)
    assert again.requests == []


def checkpoint(attempt: str, seq: int, keys: list[str]) -> Checkpoint:
    part = Part(f"/parts/{attempt}-{seq}.jsonl.zst", len(keys), 10)
    stats = Stats()
    for _ in keys:
        stats.keep()
    return Checkpoint("sgcr-x", 0, attempt, seq, {"output": [part]}, {"output": [keys]}, stats)


def test_resume_skips_overlapping_checkpoints() -> None:
    state = resume(
        [
            checkpoint("a", 0, ["r1", "r2"]),
            checkpoint("a", 1, ["r3"]),
            checkpoint("b", 0, ["r2", "r4"]),  # a concurrent attempt redid r2: not used
            checkpoint("b", 1, ["r5"]),
        ]
    )
    assert sorted(state.done) == ["r1", "r2", "r3", "r5"]
    assert [p.uri for p in state.parts["output"]] == [
        "/parts/a-0.jsonl.zst",
        "/parts/a-1.jsonl.zst",
        "/parts/b-1.jsonl.zst",
    ]
    assert state.stats.kept == 4


def test_checkpoint_round_trip() -> None:
    original = checkpoint("a", 3, ["k1", "k2"])
    assert Checkpoint.from_json(original.to_json()) == original
    assert json.loads(original.to_json())["stats"]["records"]["kept"] == 2


class RacedStore(LocalStore):
    """Another attempt commits the first stage's shard 0 just before this one tries."""

    def __init__(self, marker_suffix: str) -> None:
        self.marker_suffix = marker_suffix

    def put_bytes(self, uri: str, data: bytes, *, if_absent: bool = False) -> bool:
        if if_absent and uri.endswith(self.marker_suffix) and "/sgcr-" in uri:
            super().put_bytes(uri, data.replace(b'"attempt": "', b'"attempt": "other-'))
            return False
        return super().put_bytes(uri, data, if_absent=if_absent)


def test_lost_commit_discards_downstream_work(tmp_path: Path) -> None:
    output = str(tmp_path / "out")
    store = RacedStore("_markers/shard-000000.json")
    runner = RewriteRunner(
        FakeEngine(),
        store,
        output,
        plans(),
        inputs,
        settings=RunnerSettings(checkpoint_records=2),
    )
    with pytest.raises(LostCommitError):
        asyncio.run(runner.run([0, 1]))
    (scor,) = [p.ref for p in plans() if p.ref.kind == "scor"]
    # No later attempt resumes SCOR from chunks built on the losing SGCR outputs; their parts
    # are listed nowhere now (left for `palimpsest gc`), and nothing else was deleted.
    assert load_checkpoints(store, scor.uri(output), 0) == []
    assert read_marker(store, scor.uri(output), 0) is None
    sgcr = read_marker(store, plans()[0].ref.uri(output), 0)
    assert sgcr is not None and sgcr.attempt.startswith("other-")
