"""Parquet files from records of any shape: one schema for the whole file, and no record refused.

A Parquet file has one schema, while records carry whatever fields their source had: a field
may first appear late, change type (an id that is a number here and a string there), hold a
string no UTF-8 can encode, or an integer wider than 64 bits. Writing must still never fail
for one record (`records` promises it), so a part is first written as plain JSON Lines to a
local file and then converted in two passes of `PARQUET_BATCH_ROWS` records: the first infers
each field's type batch by batch and unifies them (numbers widen, nulls take the other type);
a field whose values have no common type is stored as JSON text (a string column), for every
record of that file. The second pass writes the rows. Strings no UTF-8 can hold get their lone
surrogates written as `\\udXXX` escapes, as the JSONL writer does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from palimpsest.records import PARQUET_BATCH_ROWS, Record, utf8

# What pyarrow raises for values it cannot convert (ArrowException covers ArrowInvalid and
# ArrowTypeError; plain Python errors come from overflows and unhashable surprises).
_CONVERSION_ERRORS: tuple[type[Exception], ...] = (ValueError, TypeError, OverflowError)


def batches(path: Path) -> Iterator[list[Record]]:
    """The staged records, PARQUET_BATCH_ROWS at a time."""
    batch: list[Record] = []
    with open(path, "rb") as lines:
        for line in lines:
            batch.append(json.loads(line))
            if len(batch) >= PARQUET_BATCH_ROWS:
                yield batch
                batch = []
    if batch:
        yield batch


def unify(old: Any, new: Any) -> Any:
    """The type both `old` and `new` values fit in; raises when there is none."""
    import pyarrow as pa

    if old == new:
        return old
    pair = [pa.schema([("f", old)]), pa.schema([("f", new)])]
    return pa.unify_schemas(pair, promote_options="permissive").field("f").type


class Layout:
    """Each field's column type, in the order fields first appear; `as_json`: stored as text."""

    def __init__(self) -> None:
        self.types: dict[str, Any] = {}
        self.as_json: set[str] = set()

    def learn(self, batch: list[Record]) -> None:
        import pyarrow as pa

        for name in dict.fromkeys(k for record in batch for k in record):
            if name in self.as_json:
                continue
            try:
                found = pa.array([utf8(r.get(name)) for r in batch]).type
                self.types[name] = unify(self.types.get(name, found), found)
            except (pa.ArrowException, *_CONVERSION_ERRORS):
                self.types.setdefault(name, pa.string())
                self.as_json.add(name)

    def schema(self) -> Any:
        import pyarrow as pa

        return pa.schema(
            [(n, pa.string() if n in self.as_json else t) for n, t in self.types.items()]
        )

    def rows(self, batch: list[Record]) -> list[Record]:
        return [{name: self.cell(name, r.get(name)) for name in self.types} for r in batch]

    def cell(self, name: str, value: Any) -> Any:
        if name in self.as_json and value is not None:
            return json.dumps(value, ensure_ascii=False, sort_keys=True)
        return utf8(value)

    def misfits(self, batch: list[Record]) -> set[str]:
        """Fields of `batch` whose values do not convert to their column's type."""
        import pyarrow as pa

        bad = set()
        for name, kind in self.types.items():
            try:
                pa.array([self.cell(name, r.get(name)) for r in batch], type=kind)
            except (pa.ArrowException, *_CONVERSION_ERRORS):
                bad.add(name)
        return bad


def write_parquet(staged: Path, target: Path) -> None:
    """Convert the JSON Lines file `staged` into the Parquet file `target`."""
    layout = Layout()
    for batch in batches(staged):
        layout.learn(batch)
    while not _write(staged, target, layout):
        pass


def _write(staged: Path, target: Path, layout: Layout) -> bool:
    """One attempt at the second pass; False (with the culprits moved to text) when a
    column refused a value its inferred type should have taken."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with pq.ParquetWriter(str(target), layout.schema(), compression="zstd") as writer:
        for batch in batches(staged):
            try:
                table = pa.Table.from_pylist(layout.rows(batch), schema=layout.schema())
            except (pa.ArrowException, *_CONVERSION_ERRORS):
                bad = layout.misfits(batch) - layout.as_json
                if not bad:
                    raise
                layout.as_json |= bad
                return False
            writer.write_table(table)
    return True
