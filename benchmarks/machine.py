"""The machine's state around a benchmark run, printed with its results.

A ratio measured while other processes held the cores says little, so every benchmark records
the load and the busiest other processes before and after it runs, and says whether the
machine was quiet.
"""

from __future__ import annotations

import os
import time
from typing import Any


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
    }


def print_machine(before: dict[str, Any], after: dict[str, Any], width: int) -> None:
    for label, state in (("before", before), ("after", after)):
        print(
            f"{'machine ' + label:>{width}}: load {state['load_average']} on {state['cores']} "
            f"cores, {'quiet' if state['quiet'] else 'NOT quiet'}; busy: "
            f"{', '.join(state['busy_processes']) or 'none'}"
        )
