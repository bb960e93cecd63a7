"""Exact and near-duplicate removal across a whole corpus, not per shard (`palimpsest dedup`).

Finding duplicates needs every record's signature at once, which no single shard has, so the
work is cut into four steps, each a pure function over one shard's records or the previous
step's results. A cluster runs each step as an Indexed Job (per shard, per column range, once,
per shard) with the results stored between them (`save_signatures` .npz per shard,
`save_edges` .npy per column range, `save_duplicates` .json per shard, each with its `load_`);
`run_dedup` runs the same functions in-process, one after the other.

1. `shard_signatures` (per shard): each record's sort key, the hash of its normalized text
   (its tokens as decontam reads them, joined by single spaces, so whitespace and indentation
   do not matter) and the MinHash of its 5-token shingles (128 permutations, rensa).
2. `bucket_edges` (per range of columns): a column is the exact hash (column 0) or one LSH band
   of 4 MinHash values (columns 1-32). Records sharing an exact hash are duplicates outright;
   records sharing a band are candidates, confirmed when the MinHash estimate of their Jaccard
   similarity (the share of equal MinHash values; standard error 0.035 at 0.8) is >= the
   threshold. Confirmation uses the estimate, not the true Jaccard, so this step needs only
   signatures, never texts. Returns the confirmed pairs.
3. `find_clusters` (once): union-find over all pairs. Each cluster keeps the record with the
   lowest sort key (its key, then its object and position); the others are its duplicates.
   Clusters are transitive: A~B and B~C join A and C even if they are less similar.
4. `filter_shard` (per shard): each record to the output, or to the rejects as `duplicate`
   with `duplicate_of` naming the kept record's id. Unusable items (undecodable, no text)
   are rejected with the reasons every stage gives them.

Memory per step, n records in all: signatures ~0.65 KB per record of the shard (128 x 4
bytes of MinHash, the hash and the sort key); buckets: every shard's signatures (0.65 KB per
record of the corpus) plus 16 bytes per record for the column being sorted; clusters: ~200
bytes per record that is in some pair, and every record's sort key (~125 bytes); filter: the
shard's duplicate map. Time: O(n x text length) for the signatures, O(n log n) per column
for the buckets plus one 128-value comparison per candidate, O(pairs) for the clusters.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import numpy as np

from palimpsest.dedupsteps import COLUMNS, DedupSettings
from palimpsest.plan import PlanSettings, make_plan
from palimpsest.recordfields import DETAIL_FIELD, DUPLICATE_OF_FIELD
from palimpsest.recordkeys import natural_key
from palimpsest.records import Fields, RawRecord, Record
from palimpsest.stages.decontam import (
    MINHASH_SEED,
    NUM_PERM,
    SHINGLE_TOKENS,
    shingle_list,
    tokens,
)
from palimpsest.stages.verdicts import Verdict, emit, input_problem
from palimpsest.stats import Stats

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from palimpsest.storage import Store

DUPLICATE: Final = "duplicate"
BAND_ROWS: Final = NUM_PERM // (COLUMNS - 1)
"""MinHash values per LSH band: a pair at Jaccard 0.8 shares some band with probability
1-(1-0.8^4)^32 > 0.9999."""
_MIX: Final = np.uint64(0x9E3779B97F4A7C15)
ID_SHIFT: Final = 32
ROW_MASK: Final = 0xFFFFFFFF
"""A global record id is its shard << ID_SHIFT | its row in the shard."""


@dataclass(frozen=True)
class ShardSignatures:
    """Step 1's result for one shard, one row per input item in reading order."""

    shard: int
    order: list[str]
    """Sort key per row: the record's key, its object and its position."""
    exact: NDArray[np.uint64]
    minhash: NDArray[np.uint32]
    """(rows, NUM_PERM)."""
    usable: NDArray[np.bool_]
    """The row has a text (unusable items never join a cluster)."""
    near: NDArray[np.bool_]
    """The row has shingles (an empty text has none)."""


def sort_key(raw: RawRecord, id_field: str) -> str:
    """The record's key, then where it came from: unique, and the same however it is sharded.
    (Canonical JSON escapes NUL, so the separator cannot occur inside the key.)"""
    return f"{natural_key(raw, id_field)}\0{raw.source}\0{raw.position:020d}"


def kept_id(order: str) -> object:
    """What `duplicate_of` says: the kept record's id, or its `@object:position` key."""
    key = order.split("\0", 1)[0]
    return key if key.startswith("@") else json.loads(key)


def normalized(words: Sequence[str]) -> bytes:
    return " ".join(words).encode("utf-8", "surrogatepass")


def _minhash(shingle_set: list[str]) -> NDArray[np.uint32]:
    from rensa import RMinHash

    minhash = RMinHash(num_perm=NUM_PERM, seed=MINHASH_SEED)
    minhash.update(shingle_set)
    return np.array(minhash.digest(), dtype=np.uint32)


# --- step 1: signatures ---------------------------------------------------------------------


def shard_signatures(shard: int, items: Iterable[RawRecord], fields: Fields) -> ShardSignatures:
    order: list[str] = []
    exact: list[int] = []
    digests: list[NDArray[np.uint32]] = []
    usable: list[bool] = []
    near: list[bool] = []
    empty = np.zeros(NUM_PERM, dtype=np.uint32)
    for raw in items:
        order.append(sort_key(raw, fields.id))
        text = None if input_problem(raw, fields) else (raw.record or {})[fields.text]
        words = tokens(text) if text is not None else []
        # A text shorter than a shingle is one shingle of all its tokens.
        grams = shingle_list(words) if len(words) >= SHINGLE_TOKENS else [" ".join(words)]
        has_near = bool(words)
        exact.append(_content_hash(normalized(words)) if text is not None else 0)
        digests.append(_minhash(grams) if has_near else empty)
        usable.append(text is not None)
        near.append(has_near)
    return ShardSignatures(
        shard=shard,
        order=order,
        exact=np.array(exact, dtype=np.uint64),
        minhash=np.stack(digests) if digests else np.zeros((0, NUM_PERM), dtype=np.uint32),
        usable=np.array(usable, dtype=np.bool_),
        near=np.array(near, dtype=np.bool_),
    )


def _content_hash(text: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


def save_signatures(signatures: ShardSignatures, path: str) -> None:
    """One .npz file per shard: what a signature pod writes and the bucket pods read."""
    order = np.frombuffer(json.dumps(signatures.order).encode("utf-8"), dtype=np.uint8)
    with open(path, "wb") as out:
        np.savez(
            out,
            shard=np.array(signatures.shard),
            order=order,
            exact=signatures.exact,
            minhash=signatures.minhash,
            usable=signatures.usable,
            near=signatures.near,
        )


def load_signatures(path: str) -> ShardSignatures:
    with np.load(path) as data:
        return ShardSignatures(
            shard=int(data["shard"]),
            order=json.loads(data["order"].tobytes().decode("utf-8")),
            exact=data["exact"],
            minhash=data["minhash"],
            usable=data["usable"],
            near=data["near"],
        )


# --- step 2: buckets ------------------------------------------------------------------------


def column_values(signatures: ShardSignatures, column: int) -> NDArray[np.uint64]:
    """The exact hash (column 0) or the hash of one band's MinHash values, per row."""
    if column == 0:
        return signatures.exact
    start = (column - 1) * BAND_ROWS
    band = signatures.minhash[:, start : start + BAND_ROWS].astype(np.uint64)
    values = np.zeros(len(band), dtype=np.uint64)
    for row in range(BAND_ROWS):
        values = values * _MIX + band[:, row]
    return values


def global_ids(signatures: ShardSignatures) -> NDArray[np.uint64]:
    rows = np.arange(len(signatures.order), dtype=np.uint64)
    return (np.uint64(signatures.shard) << np.uint64(ID_SHIFT)) | rows


class UnionFind:
    """Disjoint sets of global record ids (path halving, union by first argument's root)."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, item: int) -> int:
        parent = self.parent
        while parent.get(item, item) != item:
            grand = parent.get(parent[item], parent[item])
            parent[item] = grand
            item = grand
        return item

    def union(self, a: int, b: int) -> bool:
        """Join the sets of a and b; False when they were already one."""
        root_a, root_b = self.find(a), self.find(b)
        if root_a == root_b:
            return False
        self.parent[root_b] = root_a
        return True


ColumnValues = tuple[int, "NDArray[np.uint64]", "NDArray[np.uint64]"]
"""(column, value per row, global id per row) over every shard, rows that take part only."""

MinHashRows = Callable[[Sequence[int]], Mapping[int, "NDArray[np.uint32]"]]
"""Global ids -> their MinHash values (what confirming a bucket's candidates reads)."""


def column_entries(signatures: ShardSignatures, column: int) -> ColumnValues:
    """One shard's rows that take part in `column`: usable ones for the exact hash, ones
    with shingles for a band."""
    mask = signatures.usable if column == 0 else signatures.near
    return column, column_values(signatures, column)[mask], global_ids(signatures)[mask]


def bucket_edges(
    shards: Sequence[ShardSignatures], columns: Iterable[int], threshold: float
) -> NDArray[np.uint64]:
    """`edges_of_columns` over signatures held in memory."""
    by_shard = {s.shard: s for s in sorted(shards, key=lambda s: s.shard)}
    ordered = list(by_shard.values())

    def entries(column: int) -> ColumnValues:
        parts = [column_entries(s, column) for s in ordered]
        return (
            column,
            np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]),
        )

    def rows(items: Sequence[int]) -> dict[int, NDArray[np.uint32]]:
        return {item: _signature(by_shard, item) for item in items}

    return edges_of_columns([entries(c) for c in columns], rows, threshold)


def edges_of_columns(
    columns: Iterable[ColumnValues], minhash_rows: MinHashRows, threshold: float
) -> NDArray[np.uint64]:
    """The confirmed duplicate pairs (global ids, (pairs, 2)) the given columns find; pairs
    that a pair found before already joins are left out. The MinHash values of the band
    columns' candidates are asked for once, all together."""
    buckets = [(column, list(_groups(values, ids))) for column, values, ids in columns]
    candidates = {i for column, groups in buckets if column for group in groups for i in group}
    signatures = minhash_rows(sorted(candidates)) if candidates else {}
    joined = UnionFind()
    edges: list[tuple[int, int]] = []
    for column, groups in buckets:
        for group in groups:
            if column == 0:
                edges += [(int(group[0]), int(m)) for m in group[1:] if joined.union(group[0], m)]
            else:
                edges += _confirmed(group, signatures, threshold, joined)
    return np.array(edges, dtype=np.uint64).reshape(-1, 2)


def _groups(values: NDArray[np.uint64], ids: NDArray[np.uint64]) -> Iterator[list[int]]:
    """The ids sharing a value, for each value shared by two or more, ids in ascending order."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(ordered)]
    for start, end in zip(starts, ends, strict=True):
        if end - start > 1:
            yield [int(i) for i in ids[order[start:end]]]


def _signature(by_shard: Mapping[int, ShardSignatures], item: int) -> NDArray[np.uint32]:
    row: NDArray[np.uint32] = by_shard[item >> ID_SHIFT].minhash[item & ROW_MASK]
    return row


def _confirmed(
    group: list[int],
    signatures: Mapping[int, NDArray[np.uint32]],
    threshold: float,
    joined: UnionFind,
) -> list[tuple[int, int]]:
    """Each member joins the first earlier centre it is estimated similar to, else becomes a
    centre itself: a bucket's few false candidates do not hide its true pairs."""
    centres: list[int] = []
    edges = []
    for member in group:
        root = joined.find(member)
        if any(joined.find(c) == root for c in centres):
            continue
        mine = signatures[member]
        for centre in centres:
            if np.count_nonzero(signatures[centre] == mine) >= threshold * NUM_PERM:
                joined.union(centre, member)
                edges.append((centre, member))
                break
        else:
            centres.append(member)
    return edges


def save_edges(edges: NDArray[np.uint64], path: str) -> None:
    """One .npy file per column range: what a bucket pod writes and the cluster pod reads."""
    with open(path, "wb") as out:
        np.save(out, edges)


def load_edges(path: str) -> NDArray[np.uint64]:
    edges: NDArray[np.uint64] = np.load(path)
    return edges


# --- step 3: clusters -----------------------------------------------------------------------


def find_clusters(
    edges: Iterable[NDArray[np.uint64]], order_of: Callable[[int], str]
) -> dict[int, dict[int, str]]:
    """Per shard, the rows that are duplicates -> the sort key of their cluster's kept record
    (the lowest sort key; `order_of` gives a global id's)."""
    sets = UnionFind()
    for pairs in edges:
        for a, b in pairs.tolist():
            sets.union(a, b)
    members: dict[int, list[int]] = {}
    for item in list(sets.parent):
        members.setdefault(sets.find(item), []).append(item)
    duplicates: dict[int, dict[int, str]] = {}
    for root, cluster in members.items():
        keyed = sorted((order_of(i), i) for i in {root, *cluster})
        kept = keyed[0][0]
        for _, item in keyed[1:]:
            duplicates.setdefault(item >> ID_SHIFT, {})[item & ROW_MASK] = kept
    return duplicates


def save_duplicates(rows: Mapping[int, str], path: str) -> None:
    """One JSON file per shard, row -> the kept record's sort key: what the filter pod of
    that shard reads."""
    with open(path, "w", encoding="utf-8") as out:
        json.dump({str(row): kept for row, kept in sorted(rows.items())}, out)


def load_duplicates(path: str) -> dict[int, str]:
    with open(path, encoding="utf-8") as data:
        return {int(row): kept for row, kept in json.load(data).items()}


# --- step 4: filter -------------------------------------------------------------------------


def filter_shard(
    items: Iterable[RawRecord], duplicates: Mapping[int, str], fields: Fields
) -> Iterator[Verdict]:
    """Every item of the shard, in the order step 1 read it: kept, or rejected with a reason."""
    for row, raw in enumerate(items):
        yield row_verdict(row, raw, duplicates, fields)


def row_verdict(row: int, raw: RawRecord, duplicates: Mapping[int, str], fields: Fields) -> Verdict:
    """The item at `row` of its shard: kept, a duplicate, or unusable."""
    problem = input_problem(raw, fields)
    if problem is not None:
        return problem
    record = raw.record or {}
    kept = duplicates.get(row)
    if kept is None:
        return None, record
    return DUPLICATE, _duplicate(record, kept)


def _duplicate(record: Record, kept: str) -> Record:
    of = kept_id(kept)
    return {**record, DETAIL_FIELD: f"duplicate of {json.dumps(of)}", DUPLICATE_OF_FIELD: of}


# --- all steps in-process -------------------------------------------------------------------


def run_dedup(
    store: Store,
    input_uri: str,
    fields: Fields,
    settings: DedupSettings,
    keep: Callable[[Record], None],
    reject: Callable[[Record], None],
) -> Stats:
    """The four steps over the input, in this process: every item to `keep` or `reject`
    (with its `reject_reason`) exactly once, counted in the returned stats."""
    started = time.monotonic()
    plan = make_plan(store, input_uri, PlanSettings(records_per_shard=settings.records_per_shard))
    signatures = [shard_signatures(s.index, s.read(store), fields) for s in plan.shards]
    duplicates = all_clusters(signatures, settings)
    del signatures
    stats = Stats()
    for shard in plan.shards:
        for verdict in filter_shard(shard.read(store), duplicates.get(shard.index, {}), fields):
            emit(verdict, keep, reject, stats)
    stats.seconds = time.monotonic() - started
    return stats


def all_clusters(
    signatures: Sequence[ShardSignatures], settings: DedupSettings
) -> dict[int, dict[int, str]]:
    """Steps 2 and 3 over every shard's signatures: `find_clusters` of every column range's
    pairs (the ranges cut as the bucket Jobs cut them)."""
    threshold, ranges = settings.threshold, settings.ranges()
    edges = [bucket_edges(signatures, columns, threshold) for columns in ranges]
    return find_clusters(edges, order_lookup(signatures))


def order_lookup(signatures: Sequence[ShardSignatures]) -> Callable[[int], str]:
    """A global id's sort key, from its shard's signatures (the cluster step's `order_of`)."""
    by_shard = {s.shard: s for s in signatures}
    return lambda item: by_shard[item >> ID_SHIFT].order[item & ROW_MASK]
