"""What the vLLM benchmarks share: model and engine arguments, the tiny model, one side per
process, the machine's state, and how results are printed.

Each benchmark compares two sides on the same engine and load; these helpers keep the flags,
the per-side subprocess protocol (the last stdout line is JSON) and the printed lines the same
in every one of them.
"""

from __future__ import annotations

import argparse
import json
import os
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
        default=0.9,
        help="share of memory the engine reserves; on the CPU build, of the machine's RAM, "
        "which must be free at start (default 0.9, the engines' default)",
    )
    if max_in_flight:
        parser.add_argument("--max-in-flight", type=int, default=None)


def add_side_arguments(parser: argparse.ArgumentParser, sides: tuple[str, str]) -> None:
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


def machine_state() -> dict[str, Any]:
    """Load averages and the busiest other processes (by CPU over one second)."""
    import psutil

    mine = {os.getpid()}
    processes = list(psutil.process_iter(["name", "cmdline"]))
    for process in processes:
        try:
            process.cpu_percent(None)
        except psutil.Error:
            continue
    time.sleep(1.0)
    busy = []
    for process in processes:
        try:
            percent = process.cpu_percent(None)
        except psutil.Error:
            continue
        if percent >= 10 and process.pid not in mine:
            busy.append((percent, process.info["name"]))
    busy.sort(reverse=True)
    load = os.getloadavg()
    cores = os.cpu_count() or 1
    return {
        "load_average": [round(x, 2) for x in load],
        "cores": cores,
        "quiet": load[0] < 0.5 * cores and not busy,
        "busy_processes": [f"{name} {percent:.0f}%" for percent, name in busy[:6]],
    }


def print_machine(before: dict[str, Any], after: dict[str, Any], width: int) -> None:
    for label, state in (("before", before), ("after", after)):
        print(
            f"{'machine ' + label:>{width}}: load {state['load_average']} on {state['cores']} "
            f"cores, {'quiet' if state['quiet'] else 'NOT quiet'}; busy: "
            f"{', '.join(state['busy_processes']) or 'none'}"
        )


def rate_line(result: dict[str, Any], width: int) -> str:
    """A side's name and rate, up to its seconds; the caller adds what else it measured."""
    return (
        f"{result['name']:>{width}}: {result['tokens_per_second']:8.1f} generated tokens/s "
        f"({result['generated_tokens']} tokens in {result['seconds']} s"
    )


def print_ratio(label: str, ratio: float, note: str, width: int) -> None:
    print(f"{label:>{width}}: {ratio:.3f} ({note})")
