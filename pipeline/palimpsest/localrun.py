"""A RewriteJob on one machine, without Kubernetes: the cluster's plan, stage ids and markers.

Why it exists: a user should be able to try a recipe (or a prompt edit) on a laptop with the
very spec they would apply to a cluster. Because this writes the same plan, the same job
document, the same stage folders and the same markers as the Indexed Jobs, under the same
commit protocol, a re-run skips every committed shard, and a cluster run on the same output
would too.

How it runs the job:
- the job file goes through `job.parse_job`, as a custom resource does; relative local paths
  in `spec.input.uri` and `spec.output.uri` are taken relative to the current working
  directory (so `palimpsest run examples/quickstart.yaml` is run from the repository root);
- the plan is made and saved under `<output>/_plans/`, and the job document under
  `<output>/_jobs/`, where the operator keeps them;
- each CPU stage runs shard by shard in this process (`stagerun.run_records_shard`), built
  once for all shards (the filter's pool of linter processes starts once); dedup runs its
  steps one after the other, unit by unit (`dedupstage.run_all_steps`);
- consecutive LLM stages run on one engine, started once, over every shard (what one rewrite
  pod does with its block of shards), so a model is loaded once per run;
- a stage whose every shard is committed starts nothing (no linter pool, no engine).

`LocalOptions.limit` runs the job over a copy of the input's first N records (saved under
`<output>/_limited/`): a different input, so a different plan and different stage ids, and a
limited run never passes for a full one.

The `palimpsest filter` and `palimpsest rewrite` commands build a `Job` from their flags and
run it through `prepare` and `run_job` too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from palimpsest.commit import ConditionalPutError, check_conditional_put, read_marker
from palimpsest.document import JobDocument, job_prompts, write_document
from palimpsest.engines.base import (
    Engine,
    EngineDeadError,
    GenerationRequest,
    GenerationResult,
)
from palimpsest.engines.factory import make_engine
from palimpsest.identity import StageRef, check_tools
from palimpsest.job import Job, parse_job
from palimpsest.names import API_VERSION, KIND, LIMITED_DIR, PLANS_DIR
from palimpsest.plan import ShardPlan, make_plan
from palimpsest.progress import Progress
from palimpsest.rewrite.runner import RewriteRunner, RunnerSettings
from palimpsest.stagerun import llm_plans, run_records_shard, shard_inputs
from palimpsest.stages.registry import STAGES, Runner, groups
from palimpsest.storage import Store, is_s3, join, store_for
from palimpsest.usererrors import ModelFolderError, check_scheme

log = logging.getLogger(__name__)


class LocalRunError(RuntimeError):
    """A job that cannot run here as written (bad spec, missing tools, a model that will not
    load); the message says what to change."""


@dataclass(frozen=True)
class LocalOptions:
    """What the command line changes about a job file (None keeps the spec's value)."""

    model: str | None = None
    """Replaces spec.rewrite.engine.model, e.g. a local model folder."""
    output: str | None = None
    """Replaces spec.output.uri."""
    workers: int | None = None
    """Linter processes of the filter stage (default: spec.filter.workers, else one per core)."""
    limit: int | None = None
    """Run over the input's first N records only (see the module docstring)."""
    stages: tuple[str, ...] | None = None
    """Run only these of the job's stages; the others must be committed when a run stage
    reads them (used to run the filter and the rewrite in different Python environments)."""


@dataclass(frozen=True)
class LocalJob:
    """A job with its plan and document written, ready to run."""

    document: JobDocument
    plan: ShardPlan
    store: Store

    @property
    def job(self) -> Job:
        return self.document.job

    @property
    def refs(self) -> tuple[StageRef, ...]:
        return self.document.stage_refs()


# --- loading --------------------------------------------------------------------------------


def resolve_uri(uri: str, base: Path | None = None) -> str:
    """s3:// and absolute paths as they are; relative paths against `base` (the cwd)."""
    check_scheme(uri)
    if is_s3(uri) or uri.startswith("file://") or os.path.isabs(uri):
        return uri.removeprefix("file://")
    return str(((base or Path.cwd()) / uri).resolve())


def load_manifest(path: Path, options: LocalOptions) -> dict[str, Any]:
    """The job file as a manifest, with the options applied and local paths resolved."""
    try:
        manifest = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise LocalRunError(f"{path}: cannot read the job file: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise LocalRunError(f"{path}: {yaml_problem(exc)}") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("spec"), dict):
        raise LocalRunError(f"{path}: not a RewriteJob manifest (no spec)")
    if manifest.get("apiVersion") != API_VERSION or manifest.get("kind") != KIND:
        raise LocalRunError(f"{path}: expected apiVersion {API_VERSION} and kind {KIND}")
    spec = manifest["spec"]
    for section in ("input", "output"):
        value = spec.get(section)
        if isinstance(value, dict) and isinstance(value.get("uri"), str):
            written = value["uri"]
            try:
                value["uri"] = resolve_uri(written)
            except ValueError as exc:
                raise LocalRunError(f"{path}: spec.{section}.uri: {exc}") from exc
            if section == "input":
                check_local_input(path, written, value["uri"])
    if options.output is not None:
        spec.setdefault("output", {})["uri"] = resolve_uri(options.output)
    if options.model is not None:
        engine = spec.get("rewrite", {}).get("engine")
        if isinstance(engine, dict):
            engine["model"] = options.model
    config_map = (spec.get("rewrite") or {}).get("prompts", {}).get("configMapName")
    if config_map:
        log.warning(
            "spec.rewrite.prompts.configMapName %s: there are no ConfigMaps here; the prompts "
            "come from $PALIMPSEST_PROMPTS_DIR or the built-in files (stage ids follow the "
            "prompt text, so they match the cluster's when the texts do)",
            config_map,
        )
    return manifest


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error in one line: where, and what the parser expected."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        context = f" ({exc.context})" if exc.context else ""
        return (
            f"YAML error at line {mark.line + 1}, column {mark.column + 1}: "
            f"{exc.problem}{context}; fix the syntax there (indentation, a missing ':' or quote)"
        )
    return f"YAML error: {exc}"


def check_local_input(path: Path, written: str, resolved: str) -> None:
    """A local input that does not exist: name it, and where a relative one was looked for."""
    if is_s3(resolved) or os.path.exists(resolved):
        return
    if os.path.isabs(written.removeprefix("file://")):
        fix = "check the path"
    else:
        fix = (
            f"relative paths in a job file are taken from the current directory ({Path.cwd()}): "
            "run from the folder the job assumes, or give an absolute path or an s3:// URI"
        )
    raise LocalRunError(
        f"{path}: spec.input.uri: {written} not found (looked for {resolved}); {fix}"
    ) from FileNotFoundError(resolved)


def load_job(path: Path, options: LocalOptions) -> Job:
    try:
        job = parse_job(load_manifest(path, options))
    except ValueError as exc:
        raise LocalRunError(f"{path}: {exc}") from exc
    if options.stages is not None:
        unknown = [s for s in options.stages if s not in job.stages]
        if unknown:
            raise LocalRunError(f"--stages: {unknown} not among the job's {list(job.stages)}")
    return job


def prepare(job: Job, options: LocalOptions, prompts_dir: Path | None = None) -> LocalJob:
    """Plan the input (or its first `limit` records), save the plan and the job document."""
    s3 = job.storage.s3_settings()
    store = store_for(job.output_uri, s3)
    input_uri = job.input.uri
    if options.limit is not None:
        input_uri = limited_input(store_for(input_uri, s3), job, store, options.limit)
    try:
        plan = make_plan(store_for(input_uri, s3), input_uri, job.sharding)
    except ValueError as exc:
        raise LocalRunError(f"spec.input.uri: {exc}") from exc
    if is_s3(job.output_uri):
        try:
            check_conditional_put(store, job.output_uri)
        except ConditionalPutError as exc:
            raise LocalRunError(str(exc)) from exc
    plan_uri = join(job.output_uri, PLANS_DIR, f"plan-{plan.plan_id}.json")
    store.put_bytes(plan_uri, plan.to_json())
    if input_uri != job.input.uri:
        job = replace(job, input=replace(job.input, uri=input_uri))
    document = JobDocument(job, plan.plan_id, plan_uri, job_prompts(job, prompts_dir))
    write_document(store, document)
    return LocalJob(document, plan, store)


def limited_input(source: Store, job: Job, target: Store, limit: int) -> str:
    """A copy of the input's first `limit` records, written once (so its plan stays the same)."""
    if limit < 1:
        raise LocalRunError(f"--limit: must be >= 1, got {limit}")
    uri = join(job.output_uri, LIMITED_DIR, f"first-{limit}.jsonl")
    if target.exists(uri):
        return uri
    try:
        plan = make_plan(source, job.input.uri, job.sharding)
    except ValueError as exc:
        raise LocalRunError(f"spec.input.uri: {exc}") from exc
    lines: list[bytes] = []
    for shard in plan.shards:
        for raw in shard.read(source):
            if len(lines) >= limit:
                break
            if raw.record is not None:
                lines.append(json.dumps(raw.record, ensure_ascii=False).encode("utf-8") + b"\n")
    target.put_bytes(uri, b"".join(lines), if_absent=True)
    return uri


# --- running --------------------------------------------------------------------------------


def run_job(
    local: LocalJob,
    options: LocalOptions,
    progress: Progress | None = None,
    runner_settings: RunnerSettings | None = None,
) -> None:
    """Run every stage the options select, group by group; committed shards are skipped."""
    for group in groups(local.job.stages):
        chosen = [k for k in group if options.stages is None or k in options.stages]
        if not chosen:
            continue
        runner = STAGES[chosen[0]].runner
        if runner is Runner.RECORDS:
            run_records(local, local.document.ref(chosen[0]), options, progress)
        elif runner is Runner.CORPUS:
            run_corpus(local, local.document.ref(chosen[0]))
        else:
            run_llm(local, chosen, progress, runner_settings)


def pending_shards(local: LocalJob, ref: StageRef) -> list[int]:
    uri = ref.uri(local.job.output_uri)
    return [s for s in range(len(local.plan.shards)) if read_marker(local.store, uri, s) is None]


def run_records(
    local: LocalJob, ref: StageRef, options: LocalOptions, progress: Progress | None
) -> None:
    """Every pending shard through one CPU stage, built once."""
    shards = pending_shards(local, ref)
    if not shards:
        return
    entry = STAGES[ref.kind]
    require_tools(ref.kind)
    assert entry.open is not None
    expected = expected_records(local, ref, shards)
    tick = (
        progress(ref.kind, list(local.job.stages).index(ref.kind), expected) if progress else None
    )
    with entry.open(local.job, options.workers) as stage:
        for shard in shards:
            run_records_shard(local.store, local.document, local.plan, ref, stage, shard, tick)


def require_tools(kind: str) -> None:
    """A CPU stage's pinned tools must be installed: their versions are in its id."""
    problems = check_tools(STAGES[kind].tools)
    if problems:
        raise LocalRunError(
            f"the {kind} stage needs its pinned tools (pip install 'palimpsest[filter]'): "
            + "; ".join(problems)
        )


def run_corpus(local: LocalJob, ref: StageRef) -> None:
    """The steps of a whole-corpus stage (dedup), unit by unit, in this process."""
    from palimpsest.dedupstage import run_all_steps

    if not pending_shards(local, ref):
        return
    require_tools(ref.kind)
    run_all_steps(local.store, local.document, local.plan, ref)


def run_llm(
    local: LocalJob,
    kinds: Sequence[str],
    progress: Progress | None,
    settings: RunnerSettings | None = None,
) -> None:
    """Every shard through the LLM stages on one engine, started only if there is work."""
    job = local.job
    plans = llm_plans(local.document, kinds, local.store)
    shards = sorted({s for p in plans for s in pending_shards(local, p.ref)})
    if not shards:
        return
    check_model_folder(job)
    check_engine_tools(job)
    first = plans[0].ref
    expected = expected_records(local, first, shards)
    position = list(job.stages).index(first.kind)

    def open_ticks() -> dict[str, Callable[[int], None]]:
        """Bars for the stages, once the model is loaded (later stages' totals are unknown)."""
        if progress is None:
            return {}
        return {
            p.ref.kind: progress(p.ref.kind, position + i, expected if i == 0 else None)
            for i, p in enumerate(plans)
        }

    inputs = shard_inputs(
        local.store, local.plan, job.output_uri, first.previous, job.input.id_field
    )
    engine = CountingEngine(make_engine(job.engine))
    runner = RewriteRunner(
        engine, local.store, job.output_uri, plans, inputs, job.input.id_field, settings
    )
    asyncio.run(_run_runner(engine, runner, shards, job.engine.model, open_ticks))


async def _run_runner(
    engine: CountingEngine,
    runner: RewriteRunner,
    shards: Sequence[int],
    model: str,
    open_ticks: Callable[[], dict[str, Callable[[int], None]]],
) -> None:
    try:
        await engine.start()
    except EngineDeadError as exc:
        await engine.close()
        raise LocalRunError(model_load_hint(model, exc)) from exc
    engine.ticks = open_ticks()
    try:
        await runner.run(shards)
    finally:
        await engine.close()


def model_load_hint(model: str, exc: BaseException) -> str:
    """Why the model did not load, and how to point at a local copy instead."""
    return (
        f"could not load the model {model!r}: {exc}\n"
        "If it is a model hub name and this machine is offline (or cannot reach the hub), "
        "download the model where you can (e.g. `huggingface-cli download NAME --local-dir "
        "DIR`) and point at the local folder: palimpsest run JOB.yaml --model PATH"
    )


def check_model_folder(job: Job) -> None:
    """A local model folder must hold a model (config.json), before anything loads it."""
    model = job.engine.model
    if job.engine.type != "vllm" or is_s3(model):
        return
    folder = Path(model)
    looks_local = model.startswith((".", "/", "~")) or folder.exists()
    if not looks_local:
        return  # a model hub name
    if not folder.is_dir():
        raise ModelFolderError(
            f"model {model}: no such folder; give a model folder (with config.json) or a "
            "hub name, e.g. --model PATH"
        )
    if not (folder / "config.json").is_file():
        raise ModelFolderError(
            f"model {model}: no config.json in this folder, so it is not a model; point "
            "--model (or spec.rewrite.engine.model) at the folder holding config.json and "
            "the weights"
        )


def check_engine_tools(job: Job) -> None:
    """vLLM must be the pinned version: it is part of the stage ids."""
    if job.engine.type != "vllm":
        return
    problems = check_tools(("vllm",))
    if problems:
        raise LocalRunError(
            "engine type vllm needs the pinned vLLM in this Python (the rewrite image has it; "
            "on a CPU-only machine `make vllm-env` builds an env with it): " + "; ".join(problems)
        )


def expected_records(local: LocalJob, ref: StageRef, shards: Iterable[int]) -> int:
    """Records a stage will see: its input stage's kept counts, else the plan's estimates."""
    total = 0
    for shard in shards:
        marker = None
        if ref.previous is not None:
            marker = read_marker(local.store, join(local.job.output_uri, ref.previous), shard)
        total += marker.stats.kept if marker else local.plan.shards[shard].est_records
    return total


class CountingEngine(Engine):
    """An engine that reports each answered request to its stage's progress callback.

    Requests carry the stage kind as the prefix of their id (`kind:key`), so one wrapper
    serves every stage of the group."""

    def __init__(self, inner: Engine) -> None:
        self.inner = inner
        self.ticks: Mapping[str, Callable[[int], None]] = {}
        self.max_in_flight = inner.max_in_flight

    async def start(self) -> None:
        await self.inner.start()

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        result = await self.inner.generate(request)
        tick = self.ticks.get(request.request_id.split(":", 1)[0])
        if tick is not None:
            tick(1)
        return result

    async def close(self) -> None:
        await self.inner.close()

    @property
    def engine_seconds(self) -> float:
        return self.inner.engine_seconds

    @property
    def gpus(self) -> int:
        return self.inner.gpus


# --- exporting ------------------------------------------------------------------------------


def export(local: LocalJob, kinds: Sequence[str], output: str, rejects: str) -> dict[str, Any]:
    """Copy committed results out of the job's folders: the last of `kinds`' outputs to
    `output`, every stage's rejects to `rejects`; returns per-stage and total stats. The
    internal record key is left out: the records come back with the input's fields and the
    stages' results."""
    from palimpsest.commit import REJECTS_KIND, read_committed
    from palimpsest.recordfields import KEY_FIELD
    from palimpsest.records import RecordWriter
    from palimpsest.stats import Stats

    s3 = local.job.storage.s3_settings()
    kept = RecordWriter(store_for(output, s3), output)
    rejected = RecordWriter(store_for(rejects, s3), rejects)
    per_stage: dict[str, Stats] = {}
    total = Stats()
    for position, kind in enumerate(kinds):
        ref = local.document.ref(kind)
        stats = per_stage.setdefault(kind, Stats())
        for shard in range(len(local.plan.shards)):
            marker = read_marker(local.store, ref.uri(local.job.output_uri), shard)
            if marker is None:
                raise LocalRunError(f"shard {shard} of {kind} did not commit")
            stats.merge(marker.stats)
            for raw in read_committed(local.store, marker, REJECTS_KIND):
                assert raw.record is not None
                raw.record.pop(KEY_FIELD, None)
                rejected.write(raw.record)
            if position == len(kinds) - 1:
                for raw in read_committed(local.store, marker):
                    assert raw.record is not None
                    raw.record.pop(KEY_FIELD, None)
                    kept.write(raw.record)
        total.merge(stats)
    kept.close()
    rejected.close()
    return {"stages": {k: s.to_dict() for k, s in per_stage.items()}, "total": total.to_dict()}
