"""What the vLLM benchmarks share: model and engine arguments, the tiny model, one side per
process, and how results are printed.

Each benchmark compares two sides on the same engine and load; these helpers keep the flags,
the per-side subprocess protocol (the last stdout line is JSON) and the printed lines the same
in every one of them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def add_engine_arguments(
    parser: argparse.ArgumentParser,
    max_model_len: int,
    max_num_seqs: int,
    max_in_flight: bool = True,
) -> None:
    """--model, --max-model-len, --max-num-seqs, --gpu-memory-utilization and (optionally)
    --max-in-flight."""
    parser.add_argument("--model", default=None, help="model dir (default: make a tiny one)")
    parser.add_argument("--max-model-len", type=int, default=max_model_len)
    parser.add_argument("--max-num-seqs", type=int, default=max_num_seqs)
    parser.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=0.5,
        help="share of memory the engine reserves; on the CPU build, of the machine's RAM, "
        "which must be free at start (default 0.5: at the engines' 0.9 the KV cache and the "
        "benchmark's own processes outgrew a 24 GiB machine and it thrashed)",
    )
    if max_in_flight:
        parser.add_argument("--max-in-flight", type=int, default=None)


def add_side_arguments(parser: argparse.ArgumentParser, sides: tuple[str, ...]) -> None:
    """The hidden flags a benchmark passes to the process that runs one of its sides."""
    parser.add_argument("--side", choices=sides, help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)


def tiny_model(out_dir: Path) -> str:
    """A tiny randomly initialised model in `out_dir` (what the vLLM tests use)."""
    script = REPO / "tests" / "vllm" / "tiny_model.py"
    subprocess.run(
        [sys.executable, str(script), str(out_dir), "--seed", "0"], check=True, capture_output=True
    )
    return str(out_dir)


def engine_kwargs(settings: Any) -> dict[str, Any]:
    """vLLM's engine arguments, from a side's `EngineSettings`, for a side that drives vLLM
    itself (`LLM(**kwargs)` or `AsyncEngineArgs(**kwargs)`)."""
    return {
        "model": settings.model,
        "max_model_len": settings.max_model_len,
        "dtype": settings.dtype,
        "enable_prefix_caching": True,
        "gpu_memory_utilization": settings.gpu_memory_utilization,
        **settings.engine_args,
    }


async def start_async_llm(settings: Any) -> tuple[Any, Any, float]:
    """vLLM's AsyncLLM on these `EngineSettings`: the engine, its tokenizer and the seconds it
    took to start."""
    from vllm.v1.engine.async_llm import AsyncLLM  # type: ignore[import-not-found]

    from vllm import AsyncEngineArgs  # type: ignore[import-not-found]

    started = time.monotonic()
    llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**engine_kwargs(settings)))
    tokenizer = llm.get_tokenizer()
    if asyncio.iscoroutine(tokenizer):
        tokenizer = await tokenizer
    return llm, tokenizer, time.monotonic() - started


def side_process(
    script: str, which: str, model: str, input_uri: str, work: Path, env: dict[str, str]
) -> dict[str, Any]:
    """Run one side of a benchmark script in its own process; its last stdout line is JSON."""
    command = [sys.executable, script, *sys.argv[1:], "--side", which, "--model", model]
    command += ["--input", input_uri, "--work", str(work / which)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"the {which} side failed (exit {done.returncode})")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def rate_line(result: dict[str, Any], width: int) -> str:
    """A side's name and rate, up to its seconds; the caller adds what else it measured."""
    return (
        f"{result['name']:>{width}}: {result['tokens_per_second']:8.1f} generated tokens/s "
        f"({result['generated_tokens']} tokens in {result['seconds']} s"
    )


def print_ratio(label: str, ratio: float, note: str, width: int) -> None:
    print(f"{label:>{width}}: {ratio:.3f} ({note})")


def side_orders(sides: tuple[str, ...], rounds: int) -> list[tuple[str, ...]]:
    """The order the sides run in, round by round: reversed every other round, so a machine
    that speeds up or slows down over the run favours no side."""
    return [sides if n % 2 == 0 else sides[::-1] for n in range(rounds)]


def combined(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One side's rounds as one result: tokens and seconds summed, the rate their quotient."""
    generated = sum(int(run["generated_tokens"]) for run in runs)
    seconds = sum(float(run["seconds"]) for run in runs)
    return {
        **runs[0],
        "generated_tokens": generated,
        "seconds": round(seconds, 3),
        "tokens_per_second": round(generated / seconds, 1),
        "rounds": len(runs),
    }
