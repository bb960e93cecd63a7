"""A RewriteJob on one machine, without Kubernetes: the cluster's plan, stage ids and markers.

Why it exists: a user should be able to try a recipe (or a prompt edit) on a laptop with the
very spec they would apply to a cluster. Because this writes the same plan, the same stage
folders and the same markers as the Indexed Jobs, under the same commit protocol, a re-run
skips every committed shard, and a cluster run on the same output would too.

How it runs the job:
- the job file goes through `jobspec.parse_job`, as a custom resource does; relative local
  paths in `spec.input.uri` and `spec.output.uri` are taken relative to the current working
  directory (so `palimpsest run examples/quickstart.yaml` is run from the repository root);
- the plan is made and saved under `<output>/_plans/`, where the operator keeps it;
- the filter stage runs shard by shard in this process (`shardrun.run_filter_shard`) on one
  LintPool;
- all rewrite stages run on one engine, started once, over every shard (what one rewrite pod
  does with its block of shards), so a model is loaded once per run;
- a stage whose every shard is committed starts nothing (no linter pool, no engine).

`LocalOptions.limit` runs the job over a copy of the input's first N records (saved under
`<output>/_limited/`): a different input, so a different plan and different stage ids, and a
limited run never passes for a full one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import yaml

from palimpsest.chain import REWRITE_STAGES, StageRef
from palimpsest.commit import read_marker
from palimpsest.engines.base import (
    Engine,
    EngineDeadError,
    GenerationRequest,
    GenerationResult,
)
from palimpsest.engines.settings import make_engine
from palimpsest.jobspec import API_VERSION, KIND, JobSpec, job_stage_refs, load_job_prompts
from palimpsest.plan import ShardPlan, make_plan
from palimpsest.rewrite.job import RewriteSpec, shard_inputs, stage_plans
from palimpsest.rewrite.runner import RewriteRunner
from palimpsest.storage import Store, is_s3, join, store_for

log = logging.getLogger(__name__)

PLANS_DIR: Final = "_plans"
"""Where plans are kept under the output URI (the operator's folder name)."""
LIMITED_DIR: Final = "_limited"
"""Where `limit` keeps its copy of the input's first records under the output URI."""

Progress = Callable[[str, int, int | None], Callable[[int], None]]
"""(stage kind, position among the run's stages, expected records or None when unknown) -> a
callback taking the number of records just finished; the CLI backs it with tqdm bars."""


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
    """A parsed job with its plan and stage ids, ready to run."""

    job: JobSpec
    plan: ShardPlan
    refs: tuple[StageRef, ...]
    store: Store


# --- loading --------------------------------------------------------------------------------


def resolve_uri(uri: str, base: Path | None = None) -> str:
    """s3:// and absolute paths as they are; relative paths against `base` (the cwd)."""
    if is_s3(uri) or uri.startswith("file://") or os.path.isabs(uri):
        return uri.removeprefix("file://")
    return str(((base or Path.cwd()) / uri).resolve())


def load_manifest(path: Path, options: LocalOptions) -> dict[str, Any]:
    """The job file as a manifest, with the options applied and local paths resolved."""
    try:
        manifest = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise LocalRunError(f"{path}: {exc}") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("spec"), dict):
        raise LocalRunError(f"{path}: not a RewriteJob manifest (no spec)")
    if manifest.get("apiVersion") != API_VERSION or manifest.get("kind") != KIND:
        raise LocalRunError(f"{path}: expected apiVersion {API_VERSION} and kind {KIND}")
    spec = manifest["spec"]
    for section in ("input", "output"):
        value = spec.get(section)
        if isinstance(value, dict) and isinstance(value.get("uri"), str):
            value["uri"] = resolve_uri(value["uri"])
    if options.output is not None:
        spec.setdefault("output", {})["uri"] = resolve_uri(options.output)
    if options.model is not None:
        engine = spec.get("rewrite", {}).get("engine")
        if isinstance(engine, dict):
            engine["model"] = options.model
    return manifest


def load_job(path: Path, options: LocalOptions) -> JobSpec:
    from palimpsest.jobspec import parse_job

    try:
        job = parse_job(load_manifest(path, options))
    except ValueError as exc:
        raise LocalRunError(f"{path}: {exc}") from exc
    if options.stages is not None:
        unknown = [s for s in options.stages if s not in job.stages]
        if unknown:
            raise LocalRunError(f"--stages: {unknown} not among the job's {list(job.stages)}")
    return job


def prepare(job: JobSpec, options: LocalOptions) -> LocalJob:
    """Plan the input (or its first `limit` records), save the plan, compute the stage ids."""
    s3 = job.storage.s3_settings()
    store = store_for(job.output_uri, s3)
    input_uri = job.input.uri
    if options.limit is not None:
        input_uri = limited_input(store_for(input_uri, s3), job, store, options.limit)
    try:
        plan = make_plan(store_for(input_uri, s3), input_uri, job.sharding)
    except ValueError as exc:
        raise LocalRunError(f"spec.input.uri: {exc}") from exc
    store.put_bytes(join(job.output_uri, PLANS_DIR, f"plan-{plan.plan_id}.json"), plan.to_json())
    if job.rewrite is not None and job.rewrite.prompts_config_map:
        log.warning(
            "spec.rewrite.prompts.configMapName %s: there are no ConfigMaps here; the prompts "
            "come from $PALIMPSEST_PROMPTS_DIR or the built-in files (stage ids follow the "
            "prompt text, so they match the cluster's when the texts do)",
            job.rewrite.prompts_config_map,
        )
    refs = job_stage_refs(job, plan.plan_id, load_job_prompts(job))
    return LocalJob(job, plan, refs, store)


def limited_input(source: Store, job: JobSpec, target: Store, limit: int) -> str:
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


def stage_groups(refs: Sequence[StageRef]) -> list[list[StageRef]]:
    """The filter alone; consecutive rewrite stages together, on one engine."""
    groups: list[list[StageRef]] = []
    for ref in refs:
        joins = ref.kind in REWRITE_STAGES and groups and groups[-1][-1].kind in REWRITE_STAGES
        if joins:
            groups[-1].append(ref)
        else:
            groups.append([ref])
    return groups


def run_job(local: LocalJob, options: LocalOptions, progress: Progress | None = None) -> None:
    """Run every stage the options select; committed shards are skipped."""
    for group in stage_groups(local.refs):
        chosen = [r for r in group if options.stages is None or r.kind in options.stages]
        if not chosen:
            continue
        if chosen[0].kind == "filter":
            run_filter(local, chosen[0], options, progress)
        else:
            run_rewrite(local, chosen, progress)


def pending_shards(local: LocalJob, ref: StageRef) -> list[int]:
    uri = ref.uri(local.job.output_uri)
    return [s for s in range(len(local.plan.shards)) if read_marker(local.store, uri, s) is None]


def run_filter(
    local: LocalJob, ref: StageRef, options: LocalOptions, progress: Progress | None
) -> None:
    from palimpsest.identity import FILTER_TOOLS, check_tools
    from palimpsest.lint.pool import LintPool, default_workers
    from palimpsest.shardrun import run_filter_shard

    shards = pending_shards(local, ref)
    if not shards:
        return
    problems = check_tools(FILTER_TOOLS)
    if problems:
        raise LocalRunError(
            "the filter stage needs the pinned linters (pip install 'palimpsest[filter]'): "
            + "; ".join(problems)
        )
    settings = local.job.filter_settings(options.workers or default_workers())
    if options.workers is not None:
        settings = replace(settings, workers=options.workers)
    expected = sum(local.plan.shards[s].est_records for s in shards)
    tick = progress("filter", 0, expected) if progress else None
    with LintPool(settings.workers, settings.time_limit) as pool:
        for shard in shards:
            run_filter_shard(
                local.store, local.plan, shard, local.job.output_uri, settings, pool, tick
            )


def rewrite_spec(job: JobSpec, group: Sequence[StageRef]) -> RewriteSpec:
    """The rewrite stages of `group` as the rewrite worker would run them."""
    engine = job.engine_settings()
    if engine is None:
        raise LocalRunError("spec.rewrite.engine: required for the rewrite stages")
    return RewriteSpec(
        recipe=job.recipe,
        stages=tuple(r.kind for r in group),
        engine=engine,
        fields=job.fields,
        language=job.rewrite.language if job.rewrite and "translate" in job.stages else None,
        input_stage=group[0].previous,
    )


def run_rewrite(local: LocalJob, group: Sequence[StageRef], progress: Progress | None) -> None:
    """Every shard through the group's stages on one engine, started only if there is work."""
    job = local.job
    spec = rewrite_spec(job, group)
    plans = stage_plans(spec, local.plan.plan_id)
    if [p.ref for p in plans] != list(group):
        raise RuntimeError("rewrite stage ids differ from the job's; this is a bug")
    shards = sorted({s for ref in group for s in pending_shards(local, ref)})
    if not shards:
        return
    check_engine_tools(spec)
    expected = expected_rewrite_records(local, group[0], shards)

    def open_ticks() -> dict[str, Callable[[int], None]]:
        """Bars for the stages, once the model is loaded (later stages' totals are unknown)."""
        if progress is None:
            return {}
        return {
            ref.kind: progress(ref.kind, i, expected if i == 0 else None)
            for i, ref in enumerate(group)
        }

    inputs = shard_inputs(local.store, local.plan, job.output_uri, spec.input_stage)
    engine = CountingEngine(make_engine(spec.engine))
    runner = RewriteRunner(engine, local.store, job.output_uri, plans, inputs, spec.fields.id)
    asyncio.run(_run_runner(engine, runner, shards, spec.engine.model, open_ticks))


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


def check_engine_tools(spec: RewriteSpec) -> None:
    """vLLM must be the pinned version: it is part of the stage ids."""
    if spec.engine.type != "vllm":
        return
    from palimpsest.commands.worker import VLLM_DISTRIBUTIONS
    from palimpsest.identity import REWRITE_TOOLS, check_tools

    problems = check_tools(REWRITE_TOOLS, VLLM_DISTRIBUTIONS)
    if problems:
        raise LocalRunError(
            "engine type vllm needs the pinned vLLM in this Python (the rewrite image has it; "
            "on a CPU-only machine `make vllm-env` builds an env with it): " + "; ".join(problems)
        )


def expected_rewrite_records(local: LocalJob, first: StageRef, shards: Iterable[int]) -> int:
    """Records the first rewrite stage will see: the filter's kept counts, else estimates."""
    total = 0
    for shard in shards:
        marker = None
        if first.previous is not None:
            marker = read_marker(local.store, join(local.job.output_uri, first.previous), shard)
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

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()
