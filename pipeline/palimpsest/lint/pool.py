"""A supervised pool of linter processes that can cancel one stuck sample.

A standard process pool cannot cancel a single task, so one pathological file could hang a
shard. Here each worker has its own pipe and at most one sample in flight: when a sample
outlives its time limit, the supervisor kills that worker, reports the sample as timed out
and starts a fresh worker. A worker that dies reports its sample as a crash. Workers retire
themselves after a number of samples or above a memory ceiling, which bounds memory however
long the shard is.

One small sample can still make astroid's inference allocate gigabytes (`A = [0] * 99_999_999`
then unpacking `A`), faster than a ceiling checked between samples can help. So each worker
also caps its own address space a fixed amount above what it holds once warmed up: the sample
then fails with MemoryError inside the worker (or the worker dies), the sample is rejected as
`pylint_memory` and a fresh worker takes its place.

Each worker writes its samples under its own directory in the pool's temp root; the
supervisor removes that directory whenever the worker ends, killed or not, so no sample file
outlives its worker.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import multiprocessing.connection
import os
import resource
import shutil
import signal
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from palimpsest.lint.linter import LintResult

# Samples a worker lints before it retires (astroid caches the stdlib modules samples import;
# a fresh worker starts from a clean cache).
DEFAULT_MAX_TASKS_PER_WORKER = 20_000
# Resident memory (bytes) above which a worker retires after its current sample.
DEFAULT_MAX_WORKER_RSS = 1536 * 1024 * 1024
# Seconds a single sample may take before its worker is killed (the sample is rejected).
DEFAULT_TIME_LIMIT = 60.0
# Address space (bytes) a worker may add to what it holds once warmed up; None: no cap.
DEFAULT_MEMORY_LIMIT = 1024 * 1024 * 1024
# Allocations between a worker's young-generation collections (CPython's default: 700). Most of
# a sample's garbage is freed by reference counting and the rest at the sample's end (see
# `settle_heap`), so rarer collections only save time: 5% of a worker's, measured.
WORKER_GC_THRESHOLD = 50_000
# Resident memory (bytes) a worker may gain after a full collection before its next one (see
# `SettledHeap`). A full collection walks the whole heap, 1-2 s at 400 MiB, so it is kept
# rare: at most two per worker below the retirement ceiling.
FULL_COLLECTION_AFTER = 512 * 1024 * 1024


@dataclass(frozen=True)
class LintTask:
    key: int
    source: str
    min_score: float | None
    ratio: float


@dataclass(frozen=True)
class LintOutcome:
    """A finished task: a result, or why there is none (`pylint_timeout`, `pylint_crash`...)."""

    key: int
    result: LintResult | None
    failure: str | None = None
    detail: str | None = None


def _rss_bytes() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def _vms_bytes() -> int:
    import psutil

    return int(psutil.Process().memory_info().vms)


def limit_address_space(extra: int) -> int:
    """Cap this process's address space at its current size plus `extra` bytes; returns the
    soft limit in force. Only ever lowers the limit: a tighter existing one is kept."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    target = _vms_bytes() + extra
    if hard != resource.RLIM_INFINITY:
        target = min(target, hard)
    if soft == resource.RLIM_INFINITY or target < soft:
        resource.setrlimit(resource.RLIMIT_AS, (target, hard))
        return target
    return soft


def settle_heap(full: bool = False) -> None:
    """Collect what was allocated since the last call and exempt what survives from later
    collections; with `full`, first return every exempted object to the collector.

    A warm worker holds astroid's trees of every stdlib module its samples imported: millions
    of long-lived objects that each full collection of the cyclic GC would walk again. Measured
    on the example data, those walks were 37% of a worker's time.
    """
    if full:
        gc.unfreeze()
    gc.collect()
    gc.freeze()


class SettledHeap:
    """A worker's heap, settled after each sample (see `settle_heap`).

    Some objects frozen after a sample are its tree, still held then by astroid's and pylint's
    bounded caches; once evicted they are garbage the collector no longer walks. So when the
    worker's resident memory has grown by `FULL_COLLECTION_AFTER` since the last full settle,
    the next settle is full: such trees are freed and their memory reused.
    """

    def __init__(self) -> None:
        settle_heap(full=True)
        self._after_full = _rss_bytes()

    def settle(self, rss: int) -> None:
        full = rss > self._after_full + FULL_COLLECTION_AFTER
        settle_heap(full)
        if full:
            self._after_full = _rss_bytes()


def _worker_main(
    conn: Connection, workdir: str, max_tasks: int, max_rss: int, memory_limit: int | None
) -> None:
    from palimpsest.lint.linter import SampleLinter

    gc.set_threshold(WORKER_GC_THRESHOLD)
    linter = SampleLinter(Path(workdir))
    if memory_limit is not None:
        limit_address_space(memory_limit)
    heap = SettledHeap()
    conn.send(("ready",))
    for done in range(1, max_tasks + 1):
        task = conn.recv()
        if task is None:
            return
        exhausted = False
        try:
            result: Any = linter.lint(task.source, task.min_score, task.ratio)
            reply: tuple[Any, ...] = ("ok", task.key, result)
        except MemoryError:
            # A worker that ran out of memory may hold half-built state: it retires.
            exhausted = True
            reply = ("memory", task.key, "MemoryError: address-space limit reached")
        except (Exception, RecursionError) as exc:
            reply = ("error", task.key, f"{type(exc).__name__}: {str(exc)[:200]}")
        rss = _rss_bytes()
        retire = exhausted or done >= max_tasks or rss > max_rss
        conn.send((*reply, retire))
        if retire:
            return
        heap.settle(rss)


class _Worker:
    def __init__(
        self, ctx: Any, root: str, max_tasks: int, max_rss: int, memory_limit: int | None
    ) -> None:
        self.workdir = tempfile.mkdtemp(prefix="worker-", dir=root)
        self.conn, child = ctx.Pipe()
        self.process: BaseProcess = ctx.Process(
            target=_worker_main,
            args=(child, self.workdir, max_tasks, max_rss, memory_limit),
            daemon=True,
        )
        self.process.start()
        child.close()
        self.ready = False
        self.task: LintTask | None = None
        self.deadline = 0.0

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.conn.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


class LintPool:
    """Lints submitted tasks on `workers` processes; `collect` returns finished outcomes.

    `memory_limit`: bytes of address space each worker may add to its warmed-up size (None:
    no cap). `workdir`: the temp root for the workers' sample files (default: a fresh
    directory in the system temp dir, removed on close); it holds nothing once the pool is
    closed.
    """

    def __init__(
        self,
        workers: int,
        time_limit: float = DEFAULT_TIME_LIMIT,
        max_tasks_per_worker: int = DEFAULT_MAX_TASKS_PER_WORKER,
        max_worker_rss: int = DEFAULT_MAX_WORKER_RSS,
        workdir: Path | None = None,
        memory_limit: int | None = DEFAULT_MEMORY_LIMIT,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if time_limit <= 0:
            raise ValueError(f"time limit must be > 0 seconds, got {time_limit}")
        if memory_limit is not None and memory_limit <= 0:
            raise ValueError(f"memory limit must be > 0 bytes, got {memory_limit}")
        self._ctx = multiprocessing.get_context("fork")
        self._time_limit = time_limit
        self._own_root = workdir is None
        self.temp_root = Path(workdir or tempfile.mkdtemp(prefix="palimpsest-lint-"))
        self._args = (str(self.temp_root), max_tasks_per_worker, max_worker_rss, memory_limit)
        self._workers = [self._spawn() for _ in range(workers)]
        self._backlog: deque[LintTask] = deque()
        self._done: list[LintOutcome] = []
        self.restarts = 0

    def _spawn(self) -> _Worker:
        return _Worker(self._ctx, *self._args)

    @property
    def pending(self) -> int:
        """Tasks submitted and not yet collected."""
        busy = sum(1 for w in self._workers if w.task is not None)
        return busy + len(self._backlog) + len(self._done)

    def submit(self, task: LintTask) -> None:
        self._backlog.append(task)
        self._dispatch()

    def _dispatch(self) -> None:
        for worker in self._workers:
            if not self._backlog:
                return
            if worker.ready and worker.task is None:
                task = self._backlog.popleft()
                worker.conn.send(task)
                worker.task = task
                worker.deadline = time.monotonic() + self._time_limit

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        self._workers[self._workers.index(worker)] = self._spawn()
        self.restarts += 1

    def _fail(self, worker: _Worker, failure: str, detail: str) -> None:
        if worker.task is not None:
            self._done.append(LintOutcome(worker.task.key, None, failure, detail))
            worker.task = None
        self._replace(worker)

    def _receive(self, worker: _Worker) -> None:
        try:
            message = worker.conn.recv()
        except (EOFError, OSError):
            worker.process.join(timeout=1)
            code = worker.process.exitcode
            if code == -signal.SIGKILL:
                # What the kernel's out-of-memory killer does; nothing else here sends SIGKILL.
                self._fail(worker, "pylint_memory", "linter process was killed (out of memory)")
            else:
                self._fail(worker, "pylint_crash", f"linter process exited with code {code}")
            return
        if message[0] == "ready":
            worker.ready = True
            return
        kind, key, payload, retire = message
        if kind == "ok":
            self._done.append(LintOutcome(key, payload))
        elif kind == "memory":
            self._done.append(LintOutcome(key, None, "pylint_memory", payload))
        else:
            self._done.append(LintOutcome(key, None, "pylint_error", payload))
        worker.task = None
        if retire:
            self._replace(worker)

    def collect(self, timeout: float | None = None) -> list[LintOutcome]:
        """Wait up to `timeout` seconds (None: until something finishes) for outcomes."""
        self._dispatch()
        if not self._done and (self._backlog or any(w.task for w in self._workers)):
            self._wait(timeout)
        done, self._done = self._done, []
        return done

    def _wait(self, timeout: float | None) -> None:
        started = time.monotonic()
        while not self._done:
            now = time.monotonic()
            for worker in list(self._workers):
                if worker.task is not None and now >= worker.deadline:
                    self._fail(worker, "pylint_timeout", f"no result after {self._time_limit:g}s")
            if self._done:
                break
            deadlines = [w.deadline - now for w in self._workers if w.task is not None]
            wait_for = min(deadlines, default=1.0)
            if timeout is not None:
                wait_for = min(wait_for, timeout - (now - started))
                if wait_for <= 0:
                    break
            conns = {w.conn: w for w in self._workers}
            for conn in multiprocessing.connection.wait(list(conns), timeout=max(wait_for, 0.0)):
                self._receive(conns[conn])
            self._dispatch()

    def close(self) -> None:
        # A worker still warming up reads the None once it is ready, so none waits out the join.
        for worker in self._workers:
            if worker.process.is_alive() and worker.task is None:
                with contextlib.suppress(OSError):
                    worker.conn.send(None)
        for worker in self._workers:
            worker.process.join(timeout=2)
            worker.kill()
        if self._own_root:
            shutil.rmtree(self.temp_root, ignore_errors=True)

    def __enter__(self) -> LintPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
