"""`palimpsest rewrite IN OUT`: run a recipe's LLM stages over local or S3 files, on one machine.

It runs the same runner as the rewrite worker, over a plan of the input, in a work folder
(kept with --work-dir, so an interrupted run resumes from its checkpoints); then it writes the
last stage's outputs to OUT, every stage's rejects (with `reject_reason` and `reject_stage`) to
REJ, and the stats of each stage to STATS.json. The engine and sampling flags are shared with
`palimpsest worker rewrite` and declared here.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from typing import TYPE_CHECKING, Any

from palimpsest.commands._common import (
    EXIT_CONFIG_ERROR,
    add_field_arguments,
    add_s3_arguments,
    s3_settings,
)

if TYPE_CHECKING:
    from palimpsest.chain import StageRef
    from palimpsest.engines.settings import EngineSettings
    from palimpsest.rewrite.job import RewriteSpec
    from palimpsest.rewrite.runner import RunnerSettings
    from palimpsest.storage import S3Settings, Store

RECIPE_CHOICES = ("swallowcode", "swallowmath", "instruct")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "input",
        metavar="IN",
        help="input file or prefix (.jsonl[.gz|.zst], .parquet; local or s3://)",
    )
    parser.add_argument("output", metavar="OUT", help="rewritten records (format from the name)")
    parser.add_argument(
        "--rejects",
        metavar="REJ",
        default=None,
        help="rejected records with reject_reason "
        "(default: OUT with .rejects before the extension)",
    )
    parser.add_argument(
        "--stats", metavar="STATS.json", default=None, help="write per-stage counts and tokens here"
    )
    parser.add_argument(
        "--work-dir",
        default=None,
        help="keep stage outputs and checkpoints here, so a re-run resumes "
        "(default: a temporary folder, removed at the end)",
    )
    add_recipe_arguments(parser)
    add_engine_arguments(parser)
    add_field_arguments(parser)
    add_s3_arguments(parser)


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", required=True, choices=RECIPE_CHOICES)
    parser.add_argument(
        "--stages",
        default=None,
        help="comma-separated LLM stages, in recipe order (default: swallowcode "
        "sgcr,scor; swallowmath math; instruct response)",
    )
    parser.add_argument(
        "--language",
        default=None,
        help="target language of the instruct translate stage, e.g. Japanese",
    )
    parser.add_argument(
        "--prompts-dir", default=None, help="directory of prompt files replacing the built-in ones"
    )


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """Engine, sampling and pacing flags (defaults: the published settings)."""
    group = parser.add_argument_group("engine")
    group.add_argument("--engine", choices=("vllm", "openai"), default="vllm")
    group.add_argument(
        "--model",
        required=True,
        help="model name, local folder or s3:// prefix (vllm); served name (openai)",
    )
    group.add_argument("--model-revision", default=None, help="model revision (goes into ids)")
    group.add_argument("--base-url", default=None, help="(openai) API root up to /v1")
    group.add_argument(
        "--api-key-env",
        default="OPENAI_API_KEY",
        help="(openai) environment variable holding the API key",
    )
    group.add_argument("--tensor-parallel-size", type=int, default=1)
    group.add_argument("--max-model-len", type=int, default=None)
    group.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    group.add_argument("--dtype", default="auto")
    group.add_argument(
        "--engine-arg",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="(vllm) extra engine argument, e.g. enforce_eager=true (repeatable)",
    )
    group.add_argument("--temperature", type=float, default=0.2)
    group.add_argument("--top-p", type=float, default=0.7)
    group.add_argument("--max-tokens", type=int, default=8192)
    group.add_argument("--n", type=int, default=1, help="responses per instruction (instruct)")
    group.add_argument("--seed", type=int, default=None, help="per-request sampling seed")
    group.add_argument(
        "--max-in-flight",
        type=int,
        default=None,
        help="requests in flight (default: 512 vllm, 64 openai)",
    )
    group.add_argument(
        "--checkpoint-records",
        type=int,
        default=256,
        help="records per stage between chunk checkpoints (default 256)",
    )
    group.add_argument(
        "--checkpoint-seconds",
        type=float,
        default=300.0,
        help="most seconds between chunk checkpoints (default 300)",
    )


def engine_settings(args: argparse.Namespace) -> EngineSettings:
    from palimpsest.engines import EngineSettings, SamplingSettings

    engine_args: dict[str, Any] = {}
    for item in args.engine_arg:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--engine-arg: expected KEY=JSON, got {item!r}")
        try:
            engine_args[key] = json.loads(value)
        except json.JSONDecodeError:
            engine_args[key] = value
    return EngineSettings(
        type=args.engine,
        model=args.model,
        revision=args.model_revision,
        sampling=SamplingSettings(
            temperature=args.temperature,
            top_p=args.top_p,
            max_tokens=args.max_tokens,
            n=args.n,
            seed=args.seed,
        ),
        max_in_flight=args.max_in_flight,
        tensor_parallel_size=args.tensor_parallel_size,
        max_model_len=args.max_model_len,
        gpu_memory_utilization=args.gpu_memory_utilization,
        dtype=args.dtype,
        engine_args=engine_args,
        base_url=args.base_url,
        api_key_env=args.api_key_env,
    )


def rewrite_spec(args: argparse.Namespace, input_stage: str | None = None) -> RewriteSpec:
    """The run's spec from the flags; raises ValueError (naming the flag) on bad values."""
    from pathlib import Path

    from palimpsest.records import Fields
    from palimpsest.rewrite.job import RewriteSpec, parse_stages

    return RewriteSpec(
        recipe=args.recipe,
        stages=parse_stages(args.recipe, args.stages),
        engine=engine_settings(args),
        fields=Fields(text=args.text_field, id=args.id_field),
        prompts_dir=Path(args.prompts_dir) if args.prompts_dir else None,
        language=args.language,
        input_stage=input_stage,
    )


def runner_settings(args: argparse.Namespace) -> RunnerSettings:
    from palimpsest.rewrite.runner import RunnerSettings

    return RunnerSettings(
        checkpoint_records=args.checkpoint_records, checkpoint_seconds=args.checkpoint_seconds
    )


def run(args: argparse.Namespace) -> int:
    from palimpsest.commands.filter import default_rejects_uri
    from palimpsest.engines import EngineDeadError
    from palimpsest.plan import PlanSettings, make_plan
    from palimpsest.prompts import PromptError
    from palimpsest.rewrite.job import run_block_sync, stage_plans
    from palimpsest.storage import LocalStore, store_for

    try:
        spec = rewrite_spec(args)
        settings = runner_settings(args)
    except (ValueError, PromptError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    s3 = s3_settings(args)
    store = store_for(args.input, s3)
    plan = make_plan(
        store, args.input, PlanSettings(records_per_shard=None, bytes_per_shard=1 << 62)
    )
    work = args.work_dir or tempfile.mkdtemp(prefix="palimpsest-rewrite-")
    local = LocalStore()
    try:
        try:
            run_block_sync(spec, local, plan, work, range(len(plan.shards)), settings)
        except EngineDeadError as exc:
            print(f"error: the engine died: {exc}", file=sys.stderr)
            return 1
        refs = [p.ref for p in stage_plans(spec, plan.plan_id)]
        rejects_uri = args.rejects or default_rejects_uri(args.output)
        summary = gather(local, work, refs, len(plan.shards), args.output, rejects_uri, s3)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    if args.stats:
        store_for(args.stats, s3).put_bytes(
            args.stats, json.dumps(summary, indent=1).encode("utf-8")
        )
    print(
        json.dumps(
            {
                kind: {
                    "kept": s["records"]["kept"],
                    "rejected": s["records"]["rejected"],
                    "rejects": s["rejects"],
                    "tokens": s["tokens"],
                }
                for kind, s in summary["stages"].items()
            }
        ),
        file=sys.stderr,
    )
    return 0


def gather(
    store: Store,
    work: str,
    refs: list[StageRef],
    shards: int,
    output: str,
    rejects: str,
    s3: S3Settings,
) -> dict[str, Any]:
    """Copy the committed results out of the work folder: the last stage's outputs to
    `output`, every stage's rejects to `rejects`; returns per-stage and total stats."""
    from palimpsest.commit import REJECTS_KIND, read_committed, read_marker
    from palimpsest.records import RecordWriter
    from palimpsest.stats import Stats
    from palimpsest.storage import store_for

    kept = RecordWriter(store_for(output, s3), output)
    rejected = RecordWriter(store_for(rejects, s3), rejects)
    per_stage: dict[str, Stats] = {}
    total = Stats()
    for position, ref in enumerate(refs):
        stats = per_stage.setdefault(ref.kind, Stats())
        for shard in range(shards):
            marker = read_marker(store, ref.uri(work), shard)
            if marker is None:
                raise RuntimeError(f"shard {shard} of {ref.kind} did not commit")
            stats.merge(marker.stats)
            for raw in read_committed(store, marker, REJECTS_KIND):
                assert raw.record is not None
                rejected.write(raw.record)
            if position == len(refs) - 1:
                for raw in read_committed(store, marker):
                    assert raw.record is not None
                    kept.write(raw.record)
        total.merge(stats)
    kept.close()
    rejected.close()
    return {"stages": {k: s.to_dict() for k, s in per_stage.items()}, "total": total.to_dict()}
