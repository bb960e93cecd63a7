"""The machine's state around a benchmark run, printed with its results.

A ratio measured while other processes held the cores says little, so every benchmark records
the load and the busiest other processes before and after it runs, and says whether the
machine was quiet. A quiet machine can still change speed: on a shared host the same filter
pass has taken 14 s and 19 s minutes apart, with no other process busy. So the state
also holds a CPU probe, the time one core takes to parse and walk a fixed piece of Python;
benchmarks print it at each of their timed parts, so a swing shows next to the figures.
"""

from __future__ import annotations

import ast
import os
import statistics
import time
from typing import Any

# A fixed module for the probe to parse: 200 small functions, 6,801 syntax-tree nodes.
PROBE_SOURCE = "".join(
    f"def f{i}(a, b={i}):\n    x = [a * k for k in range(b)]\n    return {{'n': len(x) + {i}}}\n\n"
    for i in range(200)
)


def cpu_probe() -> float:
    """Milliseconds one core took to parse `PROBE_SOURCE` and walk its tree (median of 5).

    Parsing and walking allocates and chases pointers as a linter or a tokenizer does, so it
    slows with the cache and memory contention a shared host adds, not only with the clock."""
    runs = []
    for _ in range(5):
        started = time.perf_counter()
        sum(1 for _ in ast.walk(ast.parse(PROBE_SOURCE)))
        runs.append(time.perf_counter() - started)
    return round(1000 * statistics.median(runs), 2)


def steal_seconds() -> float | None:
    """Seconds the hypervisor has so far taken from this machine's cores for other guests
    (summed over cores, from /proc/stat); None where the kernel does not say.

    Time stolen during a timed part slows it without being anyone's CPU time here."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = handle.readline().split()
    except OSError:
        return None
    if len(fields) < 9 or fields[0] != "cpu":
        return None
    return int(fields[8]) / os.sysconf("SC_CLK_TCK")


def machine_state(after_run: bool = False) -> dict[str, Any]:
    """Load averages and the busiest other processes (by CPU over one second).

    Quiet: no other process busy and, before a run, a 1-minute load under half the cores.
    After a run the load averages mostly count the benchmark's own work, so only other busy
    processes make the machine not quiet.
    """
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
        "quiet": not busy and (after_run or load[0] < 0.5 * cores),
        "busy_processes": [f"{name} {percent:.0f}%" for percent, name in busy[:6]],
        "probe_ms": cpu_probe(),
    }


def print_machine(before: dict[str, Any], after: dict[str, Any], width: int) -> None:
    for label, state in (("before", before), ("after", after)):
        print(
            f"{'machine ' + label:>{width}}: load {state['load_average']} on {state['cores']} "
            f"cores, {'quiet' if state['quiet'] else 'NOT quiet'}; busy: "
            f"{', '.join(state['busy_processes']) or 'none'}; CPU probe {state['probe_ms']} ms"
        )
