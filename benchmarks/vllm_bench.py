"""What the vLLM benchmarks share: model and engine arguments, the tiny model, one side per
process, and how results are printed.

Each benchmark compares two sides on the same engine and load; these helpers keep the flags,
the per-side subprocess protocol (the last stdout line is JSON) and the printed lines the same
in every one of them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def add_engine_arguments(
    parser: argparse.ArgumentParser,
    max_model_len: int,
    max_num_seqs: int,
    max_in_flight: bool = True,
    memory_utilization: float = 0.5,
) -> None:
    """--model, --max-model-len, --max-num-seqs, --gpu-memory-utilization (default
    `memory_utilization`, for each engine the benchmark runs at once) and (optionally)
    --max-in-flight."""
    parser.add_argument("--model", default=None, help="model dir (default: make a tiny one)")
    parser.add_argument("--max-model-len", type=int, default=max_model_len)
    parser.add_argument("--max-num-seqs", type=int, default=max_num_seqs)
    parser.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=memory_utilization,
        help="share of memory each engine reserves; on the CPU build, of the machine's RAM, "
        "which must be free at start (0.5 for one engine at a time: at the engines' 0.9 the "
        "KV cache and the benchmark's own processes outgrew a 24 GiB machine and it thrashed)",
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


def side_command(script: str, which: str, model: str, input_uri: str, work: Path) -> list[str]:
    """The command that runs one side of a benchmark script: the script with the flags it was
    given, then the hidden ones naming the side (see `add_side_arguments`)."""
    command = [sys.executable, script, *sys.argv[1:], "--side", which, "--model", model]
    return [*command, "--input", input_uri, "--work", str(work / which)]


def side_process(
    script: str, which: str, model: str, input_uri: str, work: Path, env: dict[str, str]
) -> dict[str, Any]:
    """Run one side of a benchmark script in its own process; its last stdout line is JSON."""
    command = side_command(script, which, model, input_uri, work)
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"the {which} side failed (exit {done.returncode})")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


SIDE_REPLY = "@@side "
"""How a served side's reply lines start on its stdout (vLLM may log there too)."""


async def serve_side(opened: Any) -> None:
    """A served side's loop: say it is ready, then run its timed part once per line read from
    stdin (JSON naming the folder to work in), replying with the result; stop at an empty line
    or the end of input. `opened` has `cold_start`, `async run(folder)` and `async close()`."""
    loop = asyncio.get_running_loop()
    _reply({"ready": True, "cold_start_seconds": round(opened.cold_start, 1)})
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line.strip():
            break
        _reply(await opened.run(Path(json.loads(line)["folder"])))
    await opened.close()


def _reply(payload: dict[str, Any]) -> None:
    print(SIDE_REPLY + json.dumps(payload), flush=True)


class ServedSide:
    """One side of a benchmark in a process of its own that loads its engine once, then runs
    its timed part whenever told to (`serve_side`), so sides can take turns at short intervals
    and a change in the machine's speed hits them alike."""

    def __init__(
        self, script: str, which: str, model: str, input_uri: str, work: Path, env: dict[str, str]
    ) -> None:
        self.which = which
        command = side_command(script, which, model, input_uri, work)
        self.log_path = work / f"{which}.log"
        self._log = self.log_path.open("w", encoding="utf-8")
        self.process = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )

    def ready(self) -> dict[str, Any]:
        """Wait until the side has loaded and warmed up its engine; its cold start."""
        return self._read()

    def run(self, folder: Path) -> dict[str, Any]:
        """Run the side's timed part once, working in `folder`; its result."""
        assert self.process.stdin is not None
        folder.mkdir(parents=True, exist_ok=True)
        self.process.stdin.write(json.dumps({"folder": str(folder)}) + "\n")
        self.process.stdin.flush()
        return self._read()

    def cpu_seconds(self) -> float:
        """CPU seconds used so far by the side's process and its live descendants."""
        return tree_cpu_seconds(self.process.pid)

    def stop(self) -> None:
        if self.process.stdin is not None and not self.process.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self.process.stdin.close()
        try:
            self.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith(SIDE_REPLY):
                reply: dict[str, Any] = json.loads(line[len(SIDE_REPLY) :])
                return reply
        code = self.process.wait()
        self._log.flush()
        tail = self.log_path.read_text(encoding="utf-8", errors="replace")[-4000:]
        raise SystemExit(f"{tail}\nthe {self.which} side failed (exit {code})")


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


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user and system) used so far by process `pid` and its live descendants."""
    import psutil

    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    cpu = 0.0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            cpu += times.user + times.system
    return cpu


@dataclass(frozen=True)
class Usage:
    """Where a timed part starts or ends: the wall clock, the CPU seconds used so far by this
    process and its live descendants (vLLM runs its engine core in a child process), and the
    machine's steal seconds (see `machine.steal_seconds`; None where the kernel does not say)."""

    time: float
    cpu: float
    steal: float | None


def usage_now() -> Usage:
    from machine import steal_seconds

    return Usage(time.time(), tree_cpu_seconds(os.getpid()), steal_seconds())


def timed_part(start: Usage, end: Usage) -> dict[str, Any]:
    """The wall seconds, CPU seconds and steal seconds between two `usage_now` readings."""
    steal = None
    if start.steal is not None and end.steal is not None:
        steal = round(end.steal - start.steal, 2)
    return {
        "begun": start.time,
        "ended": end.time,
        "seconds": round(end.time - start.time, 3),
        "cpu_seconds": round(end.cpu - start.cpu, 2),
        "steal_seconds": steal,
    }


def combined(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One side's rounds as one result: tokens and seconds summed, the rate their quotient; CPU
    and steal seconds summed where every round measured them."""
    generated = sum(int(run["generated_tokens"]) for run in runs)
    seconds = sum(float(run["seconds"]) for run in runs)
    result = {
        **runs[0],
        "generated_tokens": generated,
        "seconds": round(seconds, 3),
        "tokens_per_second": round(generated / seconds, 1),
        "rounds": len(runs),
    }
    for key in ("cpu_seconds", "steal_seconds"):
        values = [run.get(key) for run in runs]
        result.pop(key, None)
        if all(value is not None for value in values):
            result[key] = round(sum(float(value) for value in values if value), 2)
    return result


def step_cost(runs: dict[str, list[dict[str, Any]]]) -> tuple[float, float] | None:
    """Seconds per engine step and per running request in a step, fitted by least squares to
    every run's seconds = steps * per_step + running * per_request; None when the runs cannot
    tell the two apart: every side's batches equally full, or a fitted part not positive (too
    few or too noisy runs, where neither part nor anything derived from it means anything)."""
    rows = [
        (float(run["batch"]["steps"]), float(run["batch"]["running"]), float(run["seconds"]))
        for side_runs in runs.values()
        for run in side_runs
    ]
    ss = sum(steps * steps for steps, _, _ in rows)
    sr = sum(steps * running for steps, running, _ in rows)
    rr = sum(running * running for _, running, _ in rows)
    st = sum(steps * seconds for steps, _, seconds in rows)
    rt = sum(running * seconds for _, running, seconds in rows)
    determinant = ss * rr - sr * sr
    if determinant <= 1e-9 * ss * rr:
        return None
    per_step = (st * rr - rt * sr) / determinant
    per_request = (rt * ss - st * sr) / determinant
    if per_step <= 0 or per_request <= 0:
        return None
    return per_step, per_request


def full_batch_ceiling(
    cost: tuple[float, float], runs: list[dict[str, Any]], max_num_seqs: int
) -> float:
    """How many times faster than `runs` a scheduler could be that kept every step full (the
    same running requests in as few steps as `max_num_seqs` allows), by the fitted `cost`:
    the most any scheduler gains over those runs on this engine."""
    per_step, per_request = cost
    steps = sum(float(run["batch"]["steps"]) for run in runs)
    running = sum(float(run["batch"]["running"]) for run in runs)
    as_run = steps * per_step + running * per_request
    full = running / max_num_seqs * per_step + running * per_request
    return as_run / full
