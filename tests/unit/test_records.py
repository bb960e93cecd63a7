"""Reading and writing records: formats, byte ranges and bad lines."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest

from palimpsest.records import RecordWriter, format_of, read_jsonl, read_parquet
from palimpsest.storage import LocalStore

STORE = LocalStore()


def write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


@pytest.mark.parametrize("name", ["out.jsonl", "out.jsonl.gz", "out.jsonl.zst", "out.parquet"])
def test_round_trip_keeps_every_field(tmp_path: Path, name: str) -> None:
    records = [
        {"id": i, "text": f"print({i})", "meta": {"lang": "py"}, "n": i * 2} for i in range(2500)
    ]
    writer = RecordWriter(STORE, str(tmp_path / name))
    for record in records:
        writer.write(record)
    writer.close()
    uri = str(tmp_path / name)
    read = read_parquet(STORE, uri) if format_of(uri) == "parquet" else read_jsonl(STORE, uri)
    assert [raw.record for raw in read] == records


def test_byte_ranges_tile_an_object_exactly_once(tmp_path: Path) -> None:
    rng = random.Random(3)
    lines = [json.dumps({"id": i, "text": "x" * rng.randint(0, 300)}).encode() for i in range(500)]
    path = tmp_path / "big.jsonl"
    write_lines(path, lines)
    size = path.stat().st_size
    for _ in range(20):
        cuts = sorted({0, size, *(rng.randint(0, size) for _ in range(rng.randint(1, 12)))})
        ids = []
        for start, end in itertools.pairwise(cuts):
            ids.extend(
                raw.record["id"] for raw in read_jsonl(STORE, str(path), start, end) if raw.record
            )
        assert ids == list(range(500))


def test_bad_lines_come_out_as_errors_not_exceptions(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    write_lines(
        path,
        [
            b'{"id": 1, "text": "ok"}',
            b"{not json",
            b"\xff\xfe garbage",
            b"[1, 2]",
            b'{"id": 2, "text": "ok"}',
        ],
    )
    items = list(read_jsonl(STORE, str(path)))
    assert [item.error.split(":")[0] if item.error else None for item in items] == [
        None,
        "invalid_json",
        "invalid_utf8",
        "invalid_json",
        None,
    ]


def test_compressed_objects_cannot_be_split(tmp_path: Path) -> None:
    writer = RecordWriter(STORE, str(tmp_path / "a.jsonl.gz"))
    writer.write({"text": "x"})
    writer.close()
    with pytest.raises(ValueError, match="compressed"):
        list(read_jsonl(STORE, str(tmp_path / "a.jsonl.gz"), 10, 20))


def test_unknown_format_names_the_object() -> None:
    with pytest.raises(ValueError, match=r"data\.csv"):
        format_of("s3://b/data.csv")


def test_parquet_takes_records_of_any_shape_in_one_schema(tmp_path: Path) -> None:
    """A late field, a type that changes, integers that widen to floats, a lone surrogate and
    an integer wider than 64 bits: every record is written, mixed fields as JSON text."""
    records: list[dict[str, object]] = [{"id": i, "text": "x", "n": i} for i in range(1100)]
    records += [
        {"id": "s1", "text": "late", "late": True, "n": 0.5},
        {"id": 2**70, "text": "bad \ud800 text", "late": [1, {"a": 2}]},
        {"id": None, "text": "no n"},
    ]
    uri = str(tmp_path / "out.parquet")
    writer = RecordWriter(STORE, uri)
    for record in records:
        writer.write(record)
    assert writer.close() > 0
    back = [raw.record for raw in read_parquet(STORE, uri)]
    assert len(back) == len(records)
    assert back[5] == {"id": "5", "text": "x", "n": 5.0, "late": None}
    assert back[1100]["late"] == "true" and back[1100]["n"] == 0.5
    assert json.loads(back[1101]["id"]) == 2**70 and back[1101]["text"] == "bad \\ud800 text"
    assert json.loads(back[1101]["late"]) == [1, {"a": 2}]
    assert back[1102] == {"id": None, "text": "no n", "n": None, "late": None}
