"""Corpus-scale dedup on a corpus with known clusters (exact copies, copies with whitespace
changes, copies with a few tokens edited) and unrelated records: each cluster collapses to its
lowest key, unrelated records stay, every id ends exactly once, and the steps give the same
result over many shards, run apart through their files, as over one shard."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from palimpsest.cli import main
from palimpsest.dedup import (
    DUPLICATE,
    bucket_edges,
    filter_shard,
    find_clusters,
    load_duplicates,
    load_edges,
    load_signatures,
    order_lookup,
    run_dedup,
    save_duplicates,
    save_edges,
    save_signatures,
    shard_signatures,
)
from palimpsest.dedupsteps import COLUMNS, DedupSettings
from palimpsest.recordfields import DUPLICATE_OF_FIELD, REASON_FIELD
from palimpsest.records import Fields, Record, read_all_jsonl, read_jsonl
from palimpsest.storage import LocalStore

VOCABULARY = [f"w{i}" for i in range(5000)]
WORDS = 200


def text(rng: random.Random) -> list[str]:
    return [rng.choice(VOCABULARY) for _ in range(WORDS)]


def edited(words: list[str], rng: random.Random, changes: int) -> list[str]:
    """`changes` tokens replaced, far apart: Jaccard ~ (196 - 5c) / (196 + 5c)."""
    copy = list(words)
    for position in range(10, WORDS, WORDS // changes)[:changes]:
        copy[position] = f"edit{rng.random()}"
    return copy


def corpus() -> tuple[list[Record], dict[str, str]]:
    """Records in a shuffled order, and id -> the id it duplicates (the cluster's lowest)."""
    rng = random.Random(14)
    records: list[Record] = []
    expected: dict[str, str] = {}
    for cluster in range(12):
        words = text(rng)
        copies = [
            " ".join(words),
            "  ".join(words),  # whitespace only
            "\n".join(words),
            " ".join(edited(words, rng, 2)),  # near: Jaccard ~0.90
            " ".join(edited(words, rng, 3)),
        ]
        ids = [f"c{cluster:02d}-{n}" for n in rng.sample(range(10, 99), len(copies))]
        records += [{"id": i, "text": t} for i, t in zip(ids, copies, strict=True)]
        expected.update({i: min(ids) for i in ids if i != min(ids)})
    for unrelated in range(40):
        records.append({"id": f"u{unrelated:02d}", "text": " ".join(text(rng))})
    far = text(rng)
    # Jaccard ~0.7: related, but not a duplicate.
    records += [{"id": "far-1", "text": " ".join(far)}]
    records += [{"id": "far-2", "text": " ".join(edited(far, rng, 7))}]
    rng.shuffle(records)
    return records, expected


def write_jsonl(path: Path, records: list[Record]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def dedup(uri: str, records_per_shard: int) -> tuple[list[Record], list[Record]]:
    kept: list[Record] = []
    rejected: list[Record] = []
    settings = DedupSettings(records_per_shard=records_per_shard)
    stats = run_dedup(LocalStore(), uri, Fields(), settings, kept.append, rejected.append)
    assert stats.records_in == len(kept) + len(rejected)
    return kept, rejected


def duplicate_of(rejected: list[Record]) -> dict[str, Any]:
    return {r["id"]: r[DUPLICATE_OF_FIELD] for r in rejected if r[REASON_FIELD] == DUPLICATE}


def test_each_cluster_collapses_to_its_lowest_key(tmp_path: Path) -> None:
    records, expected = corpus()
    kept, rejected = dedup(write_jsonl(tmp_path / "in.jsonl", records), 1000)
    assert duplicate_of(rejected) == expected
    kept_ids = {r["id"] for r in kept}
    assert kept_ids == {r["id"] for r in records} - expected.keys()
    assert {"far-1", "far-2"} <= kept_ids
    ended = Counter(r["id"] for r in kept + rejected)
    assert ended == Counter(r["id"] for r in records)
    assert max(ended.values()) == 1


def test_many_shards_give_the_result_of_one(tmp_path: Path) -> None:
    records, _ = corpus()
    uri = write_jsonl(tmp_path / "in.jsonl", records)
    one_kept, one_rejected = dedup(uri, 1000)
    many_kept, many_rejected = dedup(uri, 7)
    assert sorted(r["id"] for r in many_kept) == sorted(r["id"] for r in one_kept)
    assert duplicate_of(many_rejected) == duplicate_of(one_rejected)


def test_steps_run_apart_through_their_files(tmp_path: Path) -> None:
    """As separate Jobs would, each reading the files the step before wrote: signatures per
    shard, buckets per column range, one cluster step over every range's pairs, the filter
    per shard."""
    records, expected = corpus()
    objects = [records[:30], records[30:70], records[70:]]
    uris = [write_jsonl(tmp_path / f"in-{n}.jsonl", part) for n, part in enumerate(objects)]
    store = LocalStore()
    for shard, uri in enumerate(uris):
        items = read_jsonl(store, uri)
        save_signatures(shard_signatures(shard, items, Fields()), str(tmp_path / f"{shard}.npz"))
    loaded = [load_signatures(str(tmp_path / f"{s}.npz")) for s in range(len(uris))]
    for start in range(0, COLUMNS, 10):
        edges = bucket_edges(loaded, range(start, min(start + 10, COLUMNS)), 0.8)
        save_edges(edges, str(tmp_path / f"edges-{start}.npy"))
    ranges = [load_edges(str(path)) for path in sorted(tmp_path.glob("edges-*.npy"))]
    assert len(ranges) == 4
    clusters = find_clusters(ranges, order_lookup(loaded))
    for shard in range(len(uris)):
        save_duplicates(clusters.get(shard, {}), str(tmp_path / f"dup-{shard}.json"))
    found = {}
    for shard, uri in enumerate(uris):
        rows = load_duplicates(str(tmp_path / f"dup-{shard}.json"))
        verdicts = filter_shard(read_jsonl(store, uri), rows, Fields())
        found.update({r["id"]: r[DUPLICATE_OF_FIELD] for reason, r in verdicts if reason})
    assert found == expected


def test_exact_copies_join_without_shingles(tmp_path: Path) -> None:
    """Texts shorter than a shingle still match exactly; different short texts do not."""
    records = [
        {"id": 3, "text": "return  x"},
        {"id": 1, "text": "return x"},
        {"id": 2, "text": "return y"},
        {"id": 4, "text": ""},
        {"id": 5, "text": " \n"},
    ]
    kept, rejected = dedup(write_jsonl(tmp_path / "in.jsonl", records), 1000)
    assert sorted(r["id"] for r in kept) == [1, 2, 4]
    assert duplicate_of(rejected) == {3: 1, 5: 4}


def test_unusable_items_are_rejected_with_their_reasons(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"id": 1, "text": "a b"}\n{not json\n{"id": 2}\n{"id": 3, "text": 7}\n')
    kept, rejected = dedup(str(path), 1000)
    assert [r["id"] for r in kept] == [1]
    reasons = sorted(r[REASON_FIELD] for r in rejected)
    assert reasons == ["invalid_json", "missing_text", "text_not_string"]


def test_signatures_round_trip(tmp_path: Path) -> None:
    records, _ = corpus()
    items = read_jsonl(LocalStore(), write_jsonl(tmp_path / "in.jsonl", records[:9]))
    signatures = shard_signatures(4, items, Fields())
    save_signatures(signatures, str(tmp_path / "s.npz"))
    loaded = load_signatures(str(tmp_path / "s.npz"))
    assert loaded.shard == 4
    assert loaded.order == signatures.order
    assert np.array_equal(loaded.minhash, signatures.minhash)
    assert np.array_equal(loaded.exact, signatures.exact)


@pytest.mark.parametrize("threshold", [0.0, 1.5])
def test_threshold_out_of_range_is_refused(threshold: float) -> None:
    with pytest.raises(ValueError, match="threshold"):
        DedupSettings(threshold=threshold)


def test_command_writes_kept_and_rejects(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records, expected = corpus()
    source = write_jsonl(tmp_path / "in.jsonl", records)
    out, rej = tmp_path / "out.jsonl.zst", tmp_path / "rej.jsonl"
    assert main(["dedup", source, str(out), "--rejects", str(rej)]) == 0
    kept = read_all_jsonl(out.read_bytes(), str(out))
    rejected = read_all_jsonl(rej.read_bytes(), str(rej))
    assert duplicate_of(rejected) == expected
    assert len(kept) == len(records) - len(expected)
    counts = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert counts["rejects"] == {DUPLICATE: len(expected)}


def test_command_names_a_bad_threshold(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [{"id": 1, "text": "x"}])
    code = main(["dedup", source, str(tmp_path / "o.jsonl"), "--threshold", "2"])
    assert code != 0
    assert capsys.readouterr().err.startswith("error: threshold:")
