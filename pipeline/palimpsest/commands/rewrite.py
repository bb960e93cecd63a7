"""`palimpsest rewrite IN OUT`: run a recipe's LLM stages over local or S3 files, on one machine.

It builds the same job a RewriteJob with those stages would be and runs it with the local
runner (the rewrite worker's code) in a work folder (kept with --work-dir, so an interrupted
run resumes from its checkpoints); then it writes the last stage's outputs to OUT, every
stage's rejects (with `reject_reason` and `reject_stage`) to REJ, and the stats of each stage
to STATS.json. With `--input-format/--output-format openai-batch` it reads OpenAI Batch request
lines and writes batch response lines (see `palimpsest.openai_batch`).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from palimpsest.commands._common import (
    add_field_arguments,
    add_s3_arguments,
    input_spec,
    s3_settings,
    storage_spec,
    user_error,
)
from palimpsest.commands.workfolder import add_work_arguments, default_rejects_uri, work_folder
from palimpsest.stages.registry import RECIPES, STAGES, Runner

if TYPE_CHECKING:
    from palimpsest.engines.settings import EngineSettings, SpeculativeSettings
    from palimpsest.job import Job
    from palimpsest.localrun import LocalJob
    from palimpsest.rewrite.runner import RunnerSettings

BATCH = "openai-batch"
LLM_STAGES = tuple(name for name, entry in STAGES.items() if entry.runner is Runner.LLM)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "input",
        metavar="IN",
        help="input file or prefix (.jsonl[.gz|.zst], .parquet; local or s3://)",
    )
    parser.add_argument("output", metavar="OUT", help="rewritten records (format from the name)")
    add_work_arguments(parser)
    add_format_arguments(parser)
    add_recipe_arguments(parser)
    add_engine_arguments(parser)
    add_field_arguments(parser)
    add_s3_arguments(parser)


def default_stages_help() -> str:
    return "; ".join(
        f"{r.name} {','.join(s for s in r.default if s in LLM_STAGES)}" for r in RECIPES.values()
    )


def add_format_arguments(parser: argparse.ArgumentParser) -> None:
    formats = {
        "input": "records, format from the name; or OpenAI Batch request lines (custom_id -> "
        "the record id, the last user message -> the text)",
        "output": "records to OUT and REJ; or OpenAI Batch response lines to OUT "
        "(response.body with usage for kept records, error for rejects)",
    }
    for direction, meaning in formats.items():
        parser.add_argument(
            f"--{direction}-format", choices=("auto", BATCH), default="auto", help=meaning
        )


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", required=True, choices=tuple(RECIPES))
    parser.add_argument(
        "--stages",
        default=None,
        help=f"comma-separated LLM stages ({', '.join(LLM_STAGES)}), in recipe order "
        f"(default: the recipe's: {default_stages_help()})",
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
        "--tokenizer", default=None, help="(vllm) a tokenizer other than the model's"
    )
    group.add_argument("--quantization", default=None, help="(vllm) e.g. fp8, awq")
    group.add_argument("--kv-cache-dtype", default="auto", help="(vllm) e.g. fp8")
    group.add_argument(
        "--engine-arg",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="(vllm) extra engine argument, e.g. enforce_eager=true (repeatable)",
    )
    group.add_argument(
        "--speculative",
        choices=("ngram",),
        default=None,
        help="(vllm) speculative decoding method (default: none)",
    )
    group.add_argument(
        "--num-speculative-tokens", type=int, default=4, help="(vllm) tokens guessed per step"
    )
    group.add_argument(
        "--prompt-lookup-max", type=int, default=4, help="(vllm, ngram) longest n-gram looked up"
    )
    group.add_argument(
        "--prompt-lookup-min", type=int, default=1, help="(vllm, ngram) shortest n-gram looked up"
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
        tokenizer=args.tokenizer,
        quantization=args.quantization,
        kv_cache_dtype=args.kv_cache_dtype,
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
        speculative=speculative_settings(args),
        base_url=args.base_url,
        api_key_env=args.api_key_env,
    )


def speculative_settings(args: argparse.Namespace) -> SpeculativeSettings | None:
    from palimpsest.engines.settings import SpeculativeSettings

    if args.speculative is None:
        return None
    return SpeculativeSettings(
        method=args.speculative,
        num_speculative_tokens=args.num_speculative_tokens,
        prompt_lookup_max=args.prompt_lookup_max,
        prompt_lookup_min=args.prompt_lookup_min,
    )


def stages_of(args: argparse.Namespace) -> tuple[str, ...]:
    """--stages, or the LLM stages of the recipe's default; only LLM stages are allowed."""
    if not args.stages:
        return tuple(s for s in RECIPES[args.recipe].default if s in LLM_STAGES)
    names = tuple(s.strip() for s in args.stages.split(",") if s.strip())
    others = [s for s in names if s not in LLM_STAGES]
    if others:
        raise ValueError(f"--stages: {others} are not LLM stages ({', '.join(LLM_STAGES)})")
    return names


def rewrite_job(args: argparse.Namespace, work: str) -> Job:
    """The job the flags describe, writing into `work`; ValueError names what is wrong."""
    from palimpsest.job import Job, RewriteSettings
    from palimpsest.plan import PlanSettings

    return Job(
        name="rewrite",
        recipe=args.recipe,
        stages=stages_of(args),
        input=input_spec(args),
        output_uri=work,
        storage=storage_spec(args),
        sharding=PlanSettings(records_per_shard=None, bytes_per_shard=1 << 62),
        rewrite=RewriteSettings(engine=engine_settings(args), language=args.language),
    )


def runner_settings(args: argparse.Namespace) -> RunnerSettings:
    from palimpsest.rewrite.runner import RunnerSettings

    return RunnerSettings(
        checkpoint_records=args.checkpoint_records, checkpoint_seconds=args.checkpoint_seconds
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from palimpsest.engines import EngineDeadError
    from palimpsest.localrun import LocalOptions, LocalRunError, export, prepare, run_job

    with work_folder(args) as work:
        try:
            if args.input_format == BATCH:
                args = batch_input(args, work)
            job = rewrite_job(args, work)
            prompts_dir = Path(args.prompts_dir) if args.prompts_dir else None
            local = prepare(job, LocalOptions(), prompts_dir)
            run_job(local, LocalOptions(), None, runner_settings(args))
        except (LocalRunError, ValueError) as exc:
            return user_error(exc)
        except EngineDeadError as exc:
            print(f"error: the engine died: {exc}", file=sys.stderr)
            return 1
        if args.output_format == BATCH:
            summary = batch_output(local, args, work)
        else:
            rejects = args.rejects or default_rejects_uri(args.output)
            summary = export(local, job.stages, args.output, rejects)
    if args.stats:
        from palimpsest.storage import store_for

        store_for(args.stats).put_bytes(args.stats, json.dumps(summary, indent=1).encode("utf-8"))
    print(json.dumps(brief(summary)), file=sys.stderr)
    return 0


def batch_input(args: argparse.Namespace, work: str) -> argparse.Namespace:
    """The flags with IN replaced by the records of its batch requests (in the work folder)."""
    from palimpsest import openai_batch
    from palimpsest.localrun import resolve_uri
    from palimpsest.storage import join, store_for

    source = resolve_uri(args.input)
    records = join(work, "_batch", "requests.jsonl")
    openai_batch.convert_requests(
        store_for(source, s3_settings(args)), source, store_for(records), records
    )
    return argparse.Namespace(
        **{
            **vars(args),
            "input": records,
            "text_field": openai_batch.TEXT_FIELD,
            "id_field": openai_batch.ID_FIELD,
        }
    )


def batch_output(local: LocalJob, args: argparse.Namespace, work: str) -> dict[str, Any]:
    """Export the results, then write them to OUT as batch response lines (rejects as errors)."""
    from palimpsest import openai_batch
    from palimpsest.localrun import export
    from palimpsest.storage import join, store_for

    kept, rejects = join(work, "_batch", "kept.jsonl"), join(work, "_batch", "rejects.jsonl")
    summary = export(local, local.job.stages, kept, rejects)
    openai_batch.write_responses(
        store_for(kept),
        kept,
        rejects,
        store_for(args.output, s3_settings(args)),
        args.output,
        local.job.engine.model,
    )
    return summary


def brief(summary: dict[str, Any]) -> dict[str, Any]:
    return {
        kind: {
            "kept": s["records"]["kept"],
            "rejected": s["records"]["rejected"],
            "rejects": s["rejects"],
            "tokens": s["tokens"],
        }
        for kind, s in summary["stages"].items()
    }
