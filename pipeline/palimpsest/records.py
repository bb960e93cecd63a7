"""Records in and out: JSONL (plain, .gz, .zst) and Parquet, streamed in bounded memory.

A record is a JSON object (a dict). The pipeline touches only the text and id fields it is
told about; every other field is carried through untouched. Reading never raises for a bad
record: an undecodable line comes out as a `RawRecord` with an `error`, so the stage can
reject it with a reason and the shard still completes. A damaged object is different: a
compressed stream that ends before its end marker raises `CorruptObjectError` naming the object,
so a truncated upload never passes for a shorter file.

Writing never raises for a record that was read: a string no UTF-8 can hold (a lone surrogate
from a `\\ud800` escape) is written with JSON escapes, and values JSON has no type for
(Parquet timestamps, decimals, binary) are written as text (ISO 8601, the decimal's digits,
base64).
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import gzip
import io
import json
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from palimpsest.storage import StorageError, Store, iter_lines_with_offsets

JSONL = "jsonl"
PARQUET = "parquet"
FORMATS = (JSONL, PARQUET)

# Rows decoded per Parquet batch: bounds reader memory on wide or long-text tables.
PARQUET_BATCH_ROWS = 1024

Record = dict[str, Any]

# Reads of compressed input at a time.
DECOMPRESS_CHUNK = 1 << 20
# Only lines with a \uD800-\uDFFF escape can decode to a string UTF-8 cannot encode.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class CorruptObjectError(StorageError):
    """An input object is damaged (e.g. a compressed stream cut short); names the object."""


@dataclass(frozen=True)
class Fields:
    """Which record fields hold the text and the id (configurable per job)."""

    text: str = "text"
    id: str = "id"


@dataclass(frozen=True)
class RawRecord:
    """One input item: a decoded record, or the reason it could not be decoded.

    `position` is the item's byte offset (JSONL) or row number (Parquet) in its object; with
    the object's URI it names the item when the record has no id of its own.
    """

    source: str
    position: int
    record: Record | None
    error: str | None = None
    raw: str | None = None


def compression_of(uri: str) -> str | None:
    if uri.endswith(".gz"):
        return "gzip"
    if uri.endswith(".zst") or uri.endswith(".zstd"):
        return "zstd"
    return None


def format_of(uri: str) -> str:
    """The record format from the object name; raises naming the URI if unknown."""
    name = uri.lower()
    for suffix in (".gz", ".zst", ".zstd"):
        name = name.removesuffix(suffix)
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return JSONL
    if name.endswith((".parquet", ".pq")):
        return PARQUET
    raise ValueError(f"{uri}: unknown record format (expected .jsonl[.gz|.zst] or .parquet)")


def decode_line(source: str, position: int, line: bytes) -> RawRecord:
    """Decode one JSONL line; never raises."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return RawRecord(
            source,
            position,
            None,
            f"invalid_utf8: {exc.reason} at byte {exc.start}",
            line[:200].decode("utf-8", "replace"),
        )
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return RawRecord(source, position, None, f"invalid_json: {exc.msg}", text[:200])
    except RecursionError:
        return RawRecord(source, position, None, "invalid_json: nested too deeply", text[:200])
    if not isinstance(value, dict):
        return RawRecord(source, position, None, "invalid_json: not an object", text[:200])
    if _SURROGATE_ESCAPE.search(line) and not _encodable(value):
        return RawRecord(
            source, position, None, "unencodable: a lone UTF-16 surrogate escape", text[:200]
        )
    return RawRecord(source, position, value)


def _encodable(value: Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def utf8(value: Any) -> Any:
    """`value` with every string one UTF-8 can encode (lone surrogates become `\\udXXX`
    escapes), for writers and libraries that take no other strings (Parquet, tokenizers)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
        return value
    if isinstance(value, list):
        return [utf8(v) for v in value]
    if isinstance(value, dict):
        return {k: utf8(v) for k, v in value.items()}
    return value


def encode_record(record: Record) -> bytes:
    """One JSONL line (with its newline) for any record the readers produce."""
    try:
        text = json.dumps(record, ensure_ascii=False, default=_json_default)
        return text.encode("utf-8") + b"\n"
    except UnicodeEncodeError:
        return json.dumps(record, ensure_ascii=True, default=_json_default).encode() + b"\n"


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class _ZstdReader(io.RawIOBase):
    """Decompresses every frame of a zstd stream and raises if the last one is cut short."""

    def __init__(self, raw: IO[bytes], uri: str) -> None:
        import zstandard

        self._raw = raw
        self._uri = uri
        self._new = zstandard.ZstdDecompressor().decompressobj
        self._obj = self._new()
        self._pending = b""
        self._started = False
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while not self._pending and not self._done:
            self._fill()
        size = min(len(view), len(self._pending))
        view[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size

    def _fill(self) -> None:
        chunk = self._raw.read(DECOMPRESS_CHUNK)
        if not chunk:
            if self._started and not self._obj.eof:
                raise CorruptObjectError(f"{self._uri}: truncated zstd stream (no frame end)")
            self._done = True
            return
        while chunk:
            if self._obj.eof:
                self._obj = self._new()
            self._started = True
            self._pending += self._obj.decompress(chunk)
            chunk = self._obj.unused_data if self._obj.eof else b""


class _GzipReader(io.RawIOBase):
    """gzip, with a truncated stream reported as a CorruptObjectError naming the object."""

    def __init__(self, raw: IO[bytes], uri: str) -> None:
        self._inner = gzip.GzipFile(fileobj=raw)
        self._uri = uri

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            return self._inner.readinto(buffer)
        except (EOFError, gzip.BadGzipFile, OSError) as exc:
            raise CorruptObjectError(f"{self._uri}: damaged gzip stream: {exc}") from exc


def _decompressed(stream: IO[bytes], compression: str | None, uri: str) -> IO[bytes]:
    if compression == "gzip":
        return io.BufferedReader(_GzipReader(stream, uri), DECOMPRESS_CHUNK)
    if compression == "zstd":
        return io.BufferedReader(_ZstdReader(stream, uri), DECOMPRESS_CHUNK)
    return stream


def read_jsonl(
    store: Store, uri: str, start: int = 0, end: int | None = None
) -> Iterator[RawRecord]:
    """Records whose line starts in [start, end) of the object (the whole object by default).

    A line belongs to the range holding its first byte, so ranges that tile an object read
    every line exactly once. Compressed objects are only ever read whole.
    """
    compression = compression_of(uri)
    if compression is not None:
        if start != 0 or end is not None:
            raise ValueError(f"{uri}: a compressed object cannot be split by byte range")
        with _decompressed(store.open_range(uri), compression, uri) as stream:
            for offset, line in iter_lines_with_offsets(stream, 0):
                if line.strip():
                    yield decode_line(uri, offset, line)
        return
    skip_partial = start > 0
    stream = store.open_range(uri, start - 1 if skip_partial else 0)
    try:
        lines = iter_lines_with_offsets(stream, start - 1 if skip_partial else 0)
        if skip_partial:
            # The byte before `start` tells whether `start` opens a line; the fragment up to the
            # first newline belongs to the previous range.
            next(lines, None)
        for offset, line in lines:
            if end is not None and offset >= end:
                break
            if line.strip():
                yield decode_line(uri, offset, line)
    finally:
        stream.close()


def read_parquet(
    store: Store, uri: str, row_groups: tuple[int, ...] | None = None
) -> Iterator[RawRecord]:
    """Rows of the given row groups (all by default), as records, batch by batch."""
    import pyarrow.parquet as pq

    with open_seekable(store, uri) as handle:
        parquet = pq.ParquetFile(handle)
        groups = list(range(parquet.num_row_groups)) if row_groups is None else list(row_groups)
        for group in groups:
            row = sum(parquet.metadata.row_group(g).num_rows for g in range(group))
            for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=[group]):
                for record in batch.to_pylist():
                    yield RawRecord(uri, row, record)
                    row += 1


# Bytes fetched per ranged GET when Parquet seeks around an S3 object.
SEEKABLE_BLOCK = 8 << 20


class _RangeFile(io.RawIOBase):
    """A seekable read-only file over ranged reads of a store object (Parquet needs seeks)."""

    def __init__(self, store: Store, uri: str, size: int) -> None:
        self._store = store
        self._uri = uri
        self._size = size
        self._pos = 0
        self._block_start = 0
        self._block = b""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        wanted = min(len(view), self._size - self._pos)
        if wanted <= 0:
            return 0
        block_end = self._block_start + len(self._block)
        if not (self._block_start <= self._pos and self._pos + wanted <= block_end):
            end = min(self._size, self._pos + max(wanted, SEEKABLE_BLOCK))
            with self._store.open_range(self._uri, self._pos, end) as body:
                self._block = body.read()
            self._block_start = self._pos
        offset = self._pos - self._block_start
        view[:wanted] = self._block[offset : offset + wanted]
        self._pos += wanted
        return wanted


def open_seekable(store: Store, uri: str, size: int | None = None) -> IO[bytes]:
    """A seekable binary file for `uri`: the local file itself, or ranged reads of S3."""
    if not uri.startswith("s3://"):
        return open(uri, "rb")
    raw = _RangeFile(store, uri, store.size(uri) if size is None else size)
    return io.BufferedReader(raw, buffer_size=1 << 16)


class RecordWriter:
    """Writes records to a local temp file in the format of the target name, then uploads it.

    A Parquet part is staged as plain JSON Lines and converted when it is finished
    (`parquetparts`), so its schema fits every record it got.
    """

    def __init__(self, store: Store, uri: str) -> None:
        self._store = store
        self.uri = uri
        self.format = format_of(uri)
        self.count = 0
        self._path = _temp_file()
        self._staged = _temp_file() if self.format == PARQUET else None
        self._stream = self._open_jsonl()

    def _open_jsonl(self) -> IO[bytes]:
        raw = open(self._staged or self._path, "wb")  # noqa: SIM115 - closed in finish()
        compression = None if self._staged else compression_of(self.uri)
        if compression == "gzip":
            return gzip.GzipFile(fileobj=raw, mode="wb", mtime=0)  # type: ignore[return-value]
        if compression == "zstd":
            import zstandard

            return zstandard.ZstdCompressor(level=3).stream_writer(raw)
        return raw

    def write(self, record: Record) -> None:
        self.count += 1
        self._stream.write(encode_record(record))

    def close(self) -> int:
        """Finish the file and upload it; returns its size in bytes."""
        size = self.finish()
        self.upload()
        return size

    def finish(self) -> int:
        """Finish the local file (no storage I/O); returns its size in bytes."""
        self._stream.close()
        if self._staged is not None:
            from palimpsest.parquetparts import write_parquet

            write_parquet(self._staged, self._path)
            self._staged.unlink()
            self._staged = None
        return self._path.stat().st_size

    def upload(self) -> None:
        """Upload the finished file to its URI and remove the local copy."""
        self._store.upload_file(self._path, self.uri)
        self._path.unlink()

    def discard(self) -> None:
        self._stream.close()
        self._path.unlink(missing_ok=True)
        if self._staged is not None:
            self._staged.unlink(missing_ok=True)


def _temp_file() -> Path:
    fd, name = tempfile.mkstemp(prefix="palimpsest-part-")
    os.close(fd)
    return Path(name)


def read_all_jsonl(data: bytes, uri: str = "<bytes>") -> list[Record]:
    """Decode a whole (possibly compressed) JSONL blob; raises on a bad line. For small files."""
    stream = _decompressed(io.BytesIO(data), compression_of(uri), uri)
    records = []
    for position, line in iter_lines_with_offsets(stream, 0):
        if line.strip():
            raw = decode_line(uri, position, line)
            if raw.record is None:
                raise ValueError(f"{uri}: line at byte {position}: {raw.error}")
            records.append(raw.record)
    return records
