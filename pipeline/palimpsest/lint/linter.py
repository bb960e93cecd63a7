"""Lint one sample at a time in this process, scoring it exactly as a fresh pylint run would.

A fresh `pylint` process per sample spends most of its time importing pylint and building its
checkers. `SampleLinter` builds them once and re-runs them per sample, which is safe because:
- each sample is written alone into a private directory under a unique module name that no
  real module has, so nothing it imports resolves to an earlier sample and it shadows nothing;
- the options come from an empty rcfile, so no pylintrc or pyproject in the working or home
  directory changes a score;
- pylint's counters are replaced per sample and its checkers re-open per run, so no message
  crosses samples (duplicate-code, cyclic-import); what pylint sets up per run from its
  settings alone (the checkers the enabled messages need, the walker over them) is set up
  once (`ReusedModuleChecker`);
- after each sample every module outside the standard library (the sample's own included)
  leaves astroid's caches, and what the sample's attribute assignments added to the trees it
  keeps is taken back (`assigned_attributes`), so a score does not depend on which samples the
  worker linted before; what costs most in rebuilding those modules, parsing their source,
  is done once per process (see `parses`).
A MemoryError raised while linting (a worker's address-space cap) leaves `lint` as a
MemoryError instead of becoming a pylint `fatal` message and a score.
Pylint only parses the sample; the code is never imported or run.

With a threshold, linting stops as soon as the messages seen so far push the best reachable
score below it; messages only ever lower a rating, so this never changes a decision.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import functools
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from palimpsest.lint.assigned_attributes import journal_assigned_attributes
from palimpsest.lint.parses import remember_parses
from palimpsest.lint.scoring import CATEGORY_WEIGHTS, PYLINT_ARGS, penalised, printed_rating

SAMPLE_PREFIX = "_palimpsest_sample_"
"""How the module name of every sample starts (then the worker's pid and a counter)."""


@dataclass(frozen=True)
class LintResult:
    """What pylint made of one sample.

    `rating` is the printed rating before the comment penalty; None when there was nothing to
    rate (no statements, or astroid could not build the module). With `stopped_early`, the
    rating is an upper bound that already falls below the threshold.
    """

    rating: float | None
    statements: int
    stopped_early: bool = False
    parse_error: str | None = None


class _Hopeless(BaseException):
    """Raised through pylint (which catches Exception) to stop linting a sample early."""


class _OutOfMemory(BaseException):
    """Carries a MemoryError through pylint, which would turn it into a `fatal` message and a
    score; `lint` raises it again as MemoryError."""


def _memory_error_in(exc: BaseException) -> MemoryError | None:
    """The MemoryError behind `exc`, if any (pylint's `safe_infer` re-raises every error as an
    AstroidError caused by it)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, MemoryError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _passing_memory_errors(lint_file: Any) -> Any:
    """Wrap pylint's per-file linting so a MemoryError escapes its catch-all handler."""

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return lint_file(*args, **kwargs)
        except Exception as exc:
            memory_error = _memory_error_in(exc)
            if memory_error is None:
                raise
            raise _OutOfMemory from memory_error

    return wrapped


def _make_reporter(base: type[Any]) -> type[Any]:
    class ThresholdReporter(base):  # type: ignore[misc]
        """Collects nothing; tracks the rating bound and stops when it is out of reach."""

        name = "palimpsest-threshold"

        def __init__(self) -> None:
            super().__init__()
            self.arm(None, 1, 0.0)

        def arm(self, min_score: float | None, statements: int, ratio: float) -> None:
            self.min_score = min_score
            self.statements = statements
            self.ratio = ratio
            self.points = 0
            self.fatal = False

        def handle_message(self, msg: Any) -> None:
            self.points += CATEGORY_WEIGHTS.get(msg.category, 0)
            self.fatal = self.fatal or msg.category == "fatal"
            if self.min_score is None or self.statements == 0:
                return
            rating = printed_rating(self.points, self.statements, self.fatal)
            if penalised(rating, self.ratio) < self.min_score:
                raise _Hopeless

        def _display(self, layout: Any) -> None:
            pass

        def display_reports(self, layout: Any) -> None:
            pass

        def display_messages(self, layout: Any) -> None:
            pass

    return ThresholdReporter


class ReusedModuleChecker:
    """pylint's per-run checker setup (`PyLinter._astroid_module_checker`), built once.

    For every file it checks, pylint asks which checkers the enabled messages need and builds a
    walker that dispatches each node to their visit methods: 5 ms a sample, a tenth of a small
    sample's time. Both depend only on the linter's global message state (a sample's pragmas
    set a per-file state instead), so they are kept and rebuilt only when that state changes.
    The checkers still open and close around every sample, as in pylint.
    """

    def __init__(self, linter: Any) -> None:
        self._linter = linter
        self._state: tuple[tuple[str, bool], ...] | None = None
        self._checkers: list[Any] = []
        self._walker: Any = None
        self.setups = 0

    def _prepare(self) -> list[Any]:
        from pylint.utils import ASTWalker

        state = tuple(sorted(self._linter._msgs_state.items()))
        if state != self._state:
            self._checkers = self._linter.prepare_checkers()
            self._walker = ASTWalker(self._linter)
            for checker in self._checkers:
                self._walker.add_checker(checker)
            self._state = state
            self.setups += 1
        self._walker.nbstatements = 0
        self._walker.exception_msg = False
        return self._checkers

    @contextlib.contextmanager
    def __call__(self) -> Iterator[Callable[[Any], bool | None]]:
        from pylint.checkers import BaseRawFileChecker, BaseTokenChecker

        checkers = self._prepare()
        walker = self._walker
        for checker in checkers:
            checker.open()
        yield functools.partial(
            self._linter.check_astroid_module,
            walker=walker,
            tokencheckers=[c for c in checkers if isinstance(c, BaseTokenChecker)],
            rawcheckers=[c for c in checkers if isinstance(c, BaseRawFileChecker)],
        )
        self._linter.stats.statement = walker.nbstatements
        for checker in reversed(checkers):
            checker.close()


def _copy_containers(state: dict[str, Any]) -> dict[str, Any]:
    """Copy the containers of an object's state (its stacks and maps); share everything else."""
    return {
        name: copy.copy(value) if isinstance(value, (list, dict, set, collections.deque)) else value
        for name, value in state.items()
    }


def count_statements(module: Any) -> int:
    """Statements as pylint's AST walker counts them (every node with `is_statement`)."""
    count = 0
    stack = [module]
    while stack:
        node = stack.pop()
        if node.is_statement:
            count += 1
        stack.extend(node.get_children())
    return count


def forgotten_between_samples(name: str) -> bool:
    """Whether astroid's cache drops module `name` after each sample: every module outside the
    standard library (the samples' own included)."""
    from astroid.modutils import is_stdlib_module

    return bool(name) and not is_stdlib_module(name)


def _rebuilt_for_samples(name: str) -> bool:
    return forgotten_between_samples(name) and not name.startswith(SAMPLE_PREFIX)


def forget_non_stdlib_modules(manager: Any) -> None:
    """Drop from astroid's module cache every module outside the standard library, keeping the
    stdlib modules that make a warm linter fast. The unnamed entry ('') stays: dropping it
    changes how later samples' relative imports resolve (and broke parity with a fresh run).

    A sample can import a module that is neither stdlib nor its own (the CPython tests import
    `test.test_importlib.util`); what astroid built for it while linting one sample would
    otherwise change how a later sample importing it is inferred, and so its score."""
    cache = manager.astroid_cache
    for name in [name for name in cache if forgotten_between_samples(name)]:
        del cache[name]


class SampleLinter:
    """A pylint instance reused across samples; one per worker process."""

    def __init__(self, workdir: Path | None = None) -> None:
        from pylint.lint import Run
        from pylint.reporters import BaseReporter

        remember_parses(_rebuilt_for_samples)
        self._journal = journal_assigned_attributes(forgotten_between_samples)
        self._dir = Path(tempfile.mkdtemp(prefix="palimpsest-lint-", dir=workdir))
        rcfile = self._dir / "empty.rc"
        rcfile.write_text("")
        self._reporter = _make_reporter(BaseReporter)()
        warmup = self._dir / "palimpsest_warmup_sample.py"
        warmup.write_text("VALUE = 1\n")
        run = Run(
            [*PYLINT_ARGS, "--rcfile", str(rcfile), str(warmup)],
            reporter=self._reporter,
            exit=False,
        )
        warmup.unlink()
        self._linter = run.linter
        self._linter._lint_file = _passing_memory_errors(  # type: ignore[method-assign]
            self._linter._lint_file
        )
        self._linter._astroid_module_checker = ReusedModuleChecker(self._linter)  # type: ignore[method-assign]
        # Checkers reset most per-module state when a module is left; a stopped walk never
        # leaves it, so their state as of a finished run is kept to restore after a stop.
        self._pristine = [
            (checker, self._snapshot(checker))
            for checker in run.linter.get_checkers()
            if checker is not run.linter
        ]
        self._counter = 0
        self._prefix = f"{SAMPLE_PREFIX}{os.getpid()}_"

    @staticmethod
    def _snapshot(checker: Any) -> dict[str, Any]:
        return _copy_containers(vars(checker))

    def _restore_checkers(self) -> None:
        for checker, state in self._pristine:
            vars(checker).clear()
            vars(checker).update(_copy_containers(state))

    def lint(self, source: str, min_score: float | None = None, ratio: float = 0.0) -> LintResult:
        """Rate `source`; with `min_score`, stop once the penalised score cannot reach it."""
        from astroid import MANAGER, AstroidBuildingError, AstroidSyntaxError
        from pylint.utils import LinterStats

        self._counter += 1
        modname = f"{self._prefix}{self._counter}"
        path = self._dir / f"{modname}.py"
        path.write_text(source, encoding="utf-8")
        saved_path = sys.path[:]
        try:
            try:
                module = MANAGER.ast_from_file(str(path), modname, source=True)
            except (AstroidSyntaxError, AstroidBuildingError) as exc:
                if isinstance(exc.__cause__, MemoryError):
                    # The worker's address-space cap, hit while parsing: not a parse error.
                    raise exc.__cause__ from exc
                return LintResult(None, 0, parse_error=str(exc).splitlines()[0][:200])
            statements = count_statements(module)
            if statements == 0:
                return LintResult(None, 0)
            self._linter.stats = LinterStats()
            self._reporter.arm(min_score, statements, ratio)
            try:
                self._linter.check([str(path)])
            except _Hopeless:
                self._restore_checkers()
                rating = printed_rating(self._reporter.points, statements, self._reporter.fatal)
                return LintResult(rating, statements, stopped_early=True)
            except _OutOfMemory as exc:
                self._restore_checkers()
                raise MemoryError("out of memory while linting") from exc.__cause__
            stats = self._linter.stats
            if stats.statement == 0:
                return LintResult(None, 0)
            points = 5 * stats.error + stats.warning + stats.refactor + stats.convention
            return LintResult(
                printed_rating(points, stats.statement, stats.fatal > 0), stats.statement
            )
        finally:
            sys.path[:] = saved_path
            self._journal.undo()
            forget_non_stdlib_modules(MANAGER)
            path.unlink(missing_ok=True)
