"""Start, find and stop the test cluster's long-lived processes through pid files.

`cluster-up` and `cluster-down` run as separate commands, so the processes they manage must
be found again from disk. Each one runs in its own session (so it is its own process group
and a signal reaches its children too), and its pid file records the pid together with the
process's kernel start time: a pid the kernel has since reused for something else is never
signalled.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Tracked:
    """A process recorded in a pid file."""

    name: str
    pid: int
    start_time: int


def start_time_of(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses; fields follow the last ')'.
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[19])


def is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def write_pid_file(path: Path, name: str, pid: int) -> Tracked:
    started = start_time_of(pid)
    if started is None:
        raise RuntimeError(f"{name} (pid {pid}) exited immediately")
    tracked = Tracked(name, pid, started)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"name": name, "pid": pid, "start_time": started}))
    return tracked


def read_pid_file(path: Path) -> Tracked | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return Tracked(str(data["name"]), int(data["pid"]), int(data["start_time"]))


def is_alive(tracked: Tracked) -> bool:
    """True while the recorded process (not a later one with the same pid) is running."""
    return start_time_of(tracked.pid) == tracked.start_time and not is_zombie(tracked.pid)


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    log_path: Path,
    pid_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Tracked:
    """Start `argv` detached in its own session, output to `log_path`, and record it."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
    # The Popen object is dropped on purpose: the process outlives this command. Mark it
    # reaped so Python does not warn about it at exit.
    proc.returncode = 0
    return write_pid_file(pid_path, name, proc.pid)


def _signal_group(tracked: Tracked, sig: signal.Signals) -> None:
    if not is_alive(tracked):
        return
    # Every tracked process leads its own session, so its pid is its process group id.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(tracked.pid, sig)


def stop(tracked: Tracked, grace: float = 10.0) -> None:
    """SIGTERM the process group, wait up to `grace` seconds, then SIGKILL what is left."""
    _signal_group(tracked, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while is_alive(tracked) and time.monotonic() < deadline:
        _reap(tracked.pid)
        time.sleep(0.1)
    _signal_group(tracked, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while is_alive(tracked) and time.monotonic() < deadline:
        _reap(tracked.pid)
        time.sleep(0.05)
    _reap(tracked.pid)
    # Children that left the group still die with it: the group is the whole session.
    _kill_group_leftovers(tracked.pid)


def _reap(pid: int) -> None:
    """Collect the exit status if the process is our own child (the fixture's case)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _kill_group_leftovers(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def stop_pid_file(path: Path, grace: float = 10.0) -> None:
    tracked = read_pid_file(path)
    if tracked is not None:
        stop(tracked, grace)
    path.unlink(missing_ok=True)
