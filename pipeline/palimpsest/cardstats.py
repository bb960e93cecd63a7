"""The dataset card's per-shard statistics of the final texts, and the one function that sums them.

The worker that commits a shard of the job's final stage counts that shard's kept texts
(records, UTF-8 bytes, tokens with the reference tokenizer, and the length distributions in
characters and tokens) and puts the result into the shard's marker (`Marker.card`). The card,
whether `palimpsest run` or the operator writes it, only sums these small objects with
`merge`, so a card over 100,000 shards needs neither the records nor memory that grows with
them.

Length distributions are `LengthSketch`es: histograms over fixed bins (one bin per value
below `EXACT_BELOW`, then `BINS_PER_DOUBLING` log-scale bins per doubling), so two sketches
sum bin by bin and a quantile read from the sum is within one bin width (2.2%) of the exact
one; minimum, maximum and mean stay exact. Reject reasons are not repeated here: every
stage's marker stats already carry them.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from palimpsest.commit import Describe, Part, read_parts
from palimpsest.job import Job
from palimpsest.records import utf8
from palimpsest.storage import Store

EXACT_BELOW: Final = 64
"""Lengths below this have a bin each (exact quantiles for short texts)."""
BINS_PER_DOUBLING: Final = 32
"""Log-scale bins per doubling above EXACT_BELOW: a bin is 2.2% wide."""
MIXED: Final = "mixed"
"""The tokenizer name of a sum over shards that counted with different tokenizers."""

TokenCounter = Callable[[str], int]
"""Text -> its number of tokens."""


def bin_of(length: int) -> int:
    if length < EXACT_BELOW:
        return max(length, 0)
    return EXACT_BELOW + int(BINS_PER_DOUBLING * math.log2(length / EXACT_BELOW))


def bin_start(index: int) -> float:
    """The smallest length of bin `index`."""
    if index < EXACT_BELOW:
        return float(index)
    return EXACT_BELOW * 2 ** ((index - EXACT_BELOW) / BINS_PER_DOUBLING)


@dataclass
class LengthSketch:
    """A mergeable length distribution: counts per fixed bin, with exact count/sum/min/max."""

    bins: Counter[int] = field(default_factory=Counter)
    count: int = 0
    total: int = 0
    low: int | None = None
    high: int | None = None

    def add(self, length: int) -> None:
        self.bins[bin_of(length)] += 1
        self.count += 1
        self.total += length
        self.low = length if self.low is None else min(self.low, length)
        self.high = length if self.high is None else max(self.high, length)

    def merge(self, other: LengthSketch) -> None:
        self.bins.update(other.bins)
        self.count += other.count
        self.total += other.total
        for value in (other.low, other.high):
            if value is not None:
                self.low = value if self.low is None else min(self.low, value)
                self.high = value if self.high is None else max(self.high, value)

    def quantile(self, q: float) -> float:
        """The q-quantile, interpolated inside its bin and kept within [min, max]."""
        if not self.count or self.low is None or self.high is None:
            raise ValueError("no lengths")
        rank = q * (self.count - 1)
        seen = 0
        for index in sorted(self.bins):
            n = self.bins[index]
            if seen + n > rank:
                start, end = bin_start(index), bin_start(index + 1)
                if index < EXACT_BELOW:
                    value = start
                else:
                    value = start + (end - start) * (rank - seen + 0.5) / n
                return min(max(value, self.low), self.high)
            seen += n
        return float(self.high)

    def summary(self, quantiles: Iterable[float]) -> dict[str, float]:
        """min, mean, the quantiles (as p10, p50...) and max; empty without lengths."""
        if not self.count or self.low is None or self.high is None:
            return {}
        out: dict[str, float] = {"min": self.low, "mean": round(self.total / self.count, 1)}
        for q in quantiles:
            out[f"p{round(q * 100)}"] = round(self.quantile(q))
        out["max"] = self.high
        return out

    def doublings(self) -> list[tuple[int, int, int]]:
        """(from, below, records) per power-of-two range that holds any length."""
        ranges: Counter[int] = Counter()
        for index, n in self.bins.items():
            start = math.ceil(bin_start(index))
            ranges[start.bit_length() - 1 if start > 0 else -1] += n
        return [
            (0 if p < 0 else 1 << p, 1 if p < 0 else 1 << (p + 1), n)
            for p, n in sorted(ranges.items())
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "sum": self.total,
            "min": self.low,
            "max": self.high,
            "bins": {str(k): v for k, v in sorted(self.bins.items())},
        }

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> LengthSketch:
        low, high = data.get("min"), data.get("max")
        return LengthSketch(
            bins=Counter({int(k): int(v) for k, v in (data.get("bins") or {}).items()}),
            count=int(data.get("count", 0)),
            total=int(data.get("sum", 0)),
            low=None if low is None else int(low),
            high=None if high is None else int(high),
        )


@dataclass
class CardStats:
    """The final texts of one shard, or the sum over shards."""

    tokenizer: str | None = None
    """What counted the tokens (None: nothing counted yet; MIXED: several tokenizers)."""
    records: int = 0
    tokens: int = 0
    bytes: int = 0
    chars: LengthSketch = field(default_factory=LengthSketch)
    token_lengths: LengthSketch = field(default_factory=LengthSketch)
    uncounted: int = 0
    """Shards left out of the figures: their markers carry no card statistics (the operator
    never reads records to make up for them)."""

    def add(self, text: str, tokens: int) -> None:
        self.records += 1
        self.tokens += tokens
        self.bytes += len(text.encode("utf-8", "surrogatepass"))
        self.chars.add(len(text))
        self.token_lengths.add(tokens)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tokenizer": self.tokenizer,
            "records": self.records,
            "tokens": self.tokens,
            "bytes": self.bytes,
            "chars": self.chars.to_dict(),
            "token_lengths": self.token_lengths.to_dict(),
            "uncounted": self.uncounted,
        }

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> CardStats:
        tokenizer = data.get("tokenizer")
        return CardStats(
            tokenizer=None if tokenizer is None else str(tokenizer),
            records=int(data.get("records", 0)),
            tokens=int(data.get("tokens", 0)),
            bytes=int(data.get("bytes", 0)),
            chars=LengthSketch.from_dict(data.get("chars") or {}),
            token_lengths=LengthSketch.from_dict(data.get("token_lengths") or {}),
            uncounted=int(data.get("uncounted", 0)),
        )


def merge(total: CardStats, shard: CardStats) -> CardStats:
    """Add one shard's statistics into `total` (in place; returns it). Every card sums with this."""
    if shard.tokenizer is not None and shard.records:
        if total.tokenizer is None or not total.records:
            total.tokenizer = shard.tokenizer
        elif total.tokenizer != shard.tokenizer:
            total.tokenizer = MIXED
    elif total.tokenizer is None:
        total.tokenizer = shard.tokenizer
    total.records += shard.records
    total.tokens += shard.tokens
    total.bytes += shard.bytes
    total.chars.merge(shard.chars)
    total.token_lengths.merge(shard.token_lengths)
    total.uncounted += shard.uncounted
    return total


def count_texts(texts: Iterable[str], count: TokenCounter, tokenizer: str) -> CardStats:
    stats = CardStats(tokenizer=tokenizer)
    for text in texts:
        stats.add(text, count(utf8(text)))  # tokenizers take no lone surrogates
    return stats


@functools.lru_cache(maxsize=4)
def load_tokenizer(name: str | None) -> tuple[TokenCounter, str]:
    """A token counter and how to name it: the tokenizer `name` when it loads offline, else
    whitespace-separated words. Loaded once per process (a worker counts many shards)."""
    if name:
        path = Path(name) / "tokenizer.json"
        try:
            if path.is_file():
                from tokenizers import Tokenizer

                fast = Tokenizer.from_file(str(path))
                return lambda text: len(fast.encode(text, add_special_tokens=False).ids), name
            from transformers import AutoTokenizer

            auto = AutoTokenizer.from_pretrained(name, local_files_only=True)
            return lambda text: len(auto.encode(text, add_special_tokens=False)), name
        except Exception:  # any failure to load means: no reference tokenizer here
            pass
    reason = f"{name!r} could not be loaded offline" if name else "none was named"
    return lambda text: len(text.split()), f"whitespace-separated words ({reason})"


def tokenizer_name(job: Job) -> str | None:
    """spec.card.tokenizer, else the rewrite engine's tokenizer or model, else None."""
    if job.card.tokenizer:
        return job.card.tokenizer
    if job.rewrite is None:
        return None
    return job.rewrite.engine.tokenizer or job.rewrite.engine.model


def texts_of(store: Store, parts: Iterable[Part], text_field: str) -> Iterable[str]:
    for raw in read_parts(store, parts):
        text = (raw.record or {}).get(text_field)
        if isinstance(text, str):
            yield text


def describer(store: Store, job: Job) -> Describe:
    """What the final stage's commit puts into its marker: the card statistics of the output
    parts it lists (read back, so parts an earlier attempt checkpointed count as well)."""

    def describe(parts: list[Part]) -> dict[str, Any]:
        count, name = load_tokenizer(tokenizer_name(job))
        return count_texts(texts_of(store, parts, job.input.text_field), count, name).to_dict()

    return describe
