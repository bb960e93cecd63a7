"""The card's per-shard statistics: sketches sum bin by bin, so the sum over shards equals the
statistics of all texts at once, and quantiles read from a sketch stay within one bin of the
exact ones."""

from __future__ import annotations

import random
import statistics

from hypothesis import given
from hypothesis import strategies as st

from palimpsest.cardstats import (
    BINS_PER_DOUBLING,
    MIXED,
    CardStats,
    LengthSketch,
    count_texts,
    merge,
)


def sketch_of(lengths: list[int]) -> LengthSketch:
    sketch = LengthSketch()
    for n in lengths:
        sketch.add(n)
    return sketch


@given(st.lists(st.lists(st.integers(0, 10**7), max_size=30), max_size=6))
def test_merging_shards_equals_sketching_everything(shards: list[list[int]]) -> None:
    total = LengthSketch()
    for lengths in shards:
        total.merge(LengthSketch.from_dict(sketch_of(lengths).to_dict()))
    assert total.to_dict() == sketch_of([n for s in shards for n in s]).to_dict()


def test_quantiles_are_within_one_bin_of_the_exact_ones() -> None:
    rng = random.Random(7)
    lengths = [int(rng.lognormvariate(7, 1.5)) for _ in range(20_000)]
    sketch = sketch_of(lengths)
    exact = statistics.quantiles(lengths, n=100, method="inclusive")
    width = 2 ** (1 / BINS_PER_DOUBLING) - 1
    for q in (0.1, 0.5, 0.9, 0.99):
        truth = exact[round(q * 100) - 1]
        assert abs(sketch.quantile(q) - truth) <= width * truth + 1, q
    summary = sketch.summary([0.5])
    assert (summary["min"], summary["max"]) == (min(lengths), max(lengths))
    assert summary["mean"] == round(statistics.fmean(lengths), 1)


def test_short_lengths_are_exact() -> None:
    sketch = sketch_of([3, 5, 5, 9, 40])
    assert [sketch.quantile(q) for q in (0.0, 0.5, 1.0)] == [3, 5, 40]
    assert sketch.doublings() == [(2, 4, 1), (4, 8, 2), (8, 16, 1), (32, 64, 1)]


def test_the_sum_names_its_tokenizer_or_says_it_was_mixed() -> None:
    words = count_texts(["a b", "c"], lambda t: len(t.split()), "words")
    chars = count_texts(["ab"], len, "chars")
    total = merge(merge(CardStats(), words), count_texts([], len, "chars"))
    assert (total.tokenizer, total.records, total.tokens) == ("words", 2, 3)
    assert merge(total, chars).tokenizer == MIXED
    assert (total.records, total.tokens, total.bytes) == (3, 5, 6)
