"""One way to reach objects, whether they live on local disk or behind an S3 API.

Everything that reads or writes data (readers, writers, plans, markers) goes through a
`Store`, so local runs and cluster runs share the same code path. S3 is reached with boto3:
credentials and region come the standard AWS way (environment, profile, workload identity),
and an explicit endpoint serves MinIO, Ceph or any other S3. `AWS_ENDPOINT_URL_S3` (read by
boto3 itself) works too.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from botocore.exceptions import BotoCoreError

from palimpsest.usererrors import check_scheme

S3_SCHEME = "s3://"

# Retries of transient S3 errors (throttling, 5xx, connection resets): boto3's "standard"
# mode with exponential backoff. 10 attempts ride out a few seconds of endpoint trouble.
S3_MAX_ATTEMPTS = 10
# Seconds to open a connection and to wait for the next bytes of an answer. botocore's 60 s
# default, times the retries above, let one call to an endpoint that accepts connections and
# never answers block for ten minutes; a few seconds fail over in well under a minute.
S3_CONNECT_TIMEOUT = 5.0
S3_READ_TIMEOUT = 10.0
# A conditional put answered 409 ConditionalRequestConflict (another conditional write of the
# same key in flight) is tried again this many times, backing off, before it is an error.
CONFLICT_ATTEMPTS = 5


class StorageError(RuntimeError):
    """An object could not be read or written; the message names the URI."""


@dataclass(frozen=True)
class S3Settings:
    """How to reach S3. Empty fields fall back to boto3's own resolution."""

    endpoint_url: str | None = None  # e.g. http://minio:9000; None = AWS or AWS_ENDPOINT_URL_S3
    region: str | None = None  # None = AWS_REGION / AWS_DEFAULT_REGION / profile


@dataclass(frozen=True)
class S3Timeouts:
    """Seconds to connect and to wait for the next bytes, and retries of a call after its
    first attempt (botocore's `max_attempts`, standard mode). Workers keep the defaults; a
    caller that must never wait long (the operator's tick) passes shorter ones."""

    connect: float = S3_CONNECT_TIMEOUT
    read: float = S3_READ_TIMEOUT
    retries: int = S3_MAX_ATTEMPTS


@dataclass(frozen=True)
class ObjectInfo:
    """One listed object: its URI, size in bytes and a content tag (ETag or mtime-size)."""

    uri: str
    size: int
    etag: str


Listing = list[ObjectInfo]
"""Objects of a listing, in URI order."""


def is_s3(uri: str) -> bool:
    return uri.startswith(S3_SCHEME)


def split_s3(uri: str) -> tuple[str, str]:
    """`s3://bucket/key` -> (bucket, key)."""
    if not is_s3(uri):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len(S3_SCHEME) :].partition("/")
    if not bucket:
        raise ValueError(f"s3 URI without a bucket: {uri!r}")
    return bucket, key


def join(base: str, *parts: str) -> str:
    """Join URI or path parts with single slashes."""
    out = base.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


class Store(Protocol):
    """The operations the pipeline needs from a storage backend."""

    def list(self, prefix: str) -> list[ObjectInfo]: ...

    def list_after(self, prefix: str, after: str, limit: int) -> Listing: ...

    def size(self, uri: str) -> int: ...

    def open_range(self, uri: str, start: int = 0, end: int | None = None) -> IO[bytes]: ...

    def read_bytes(self, uri: str) -> bytes: ...

    def read_if_exists(self, uri: str) -> bytes | None:
        """The object's bytes, or None when there is none: one request, not a HEAD and a GET."""
        ...

    def exists(self, uri: str) -> bool: ...

    def put_bytes(self, uri: str, data: bytes, *, if_absent: bool = False) -> bool: ...

    def upload_file(self, path: Path, uri: str) -> None: ...

    def delete(self, uri: str) -> None: ...


class LocalStore:
    """Local files. Put-if-absent is atomic through a hard link of a finished temp file."""

    def list(self, prefix: str) -> list[ObjectInfo]:
        root = Path(prefix)
        if root.is_file():
            paths = [root]
        elif root.is_dir():
            paths = [p for p in root.rglob("*") if p.is_file()]
        else:
            raise StorageError(f"no such file or directory: {prefix}") from FileNotFoundError(
                prefix
            )
        infos = []
        for path in sorted(paths):
            stat = path.stat()
            infos.append(ObjectInfo(str(path), stat.st_size, f"{stat.st_mtime_ns}-{stat.st_size}"))
        return infos

    def list_after(self, prefix: str, after: str, limit: int) -> Listing:
        """At most `limit` files under the folder `prefix` whose path sorts after `after`."""
        try:
            infos = self.list(prefix)
        except StorageError:
            return []
        return [i for i in infos if i.uri > after][:limit]

    def size(self, uri: str) -> int:
        return Path(uri).stat().st_size

    def open_range(self, uri: str, start: int = 0, end: int | None = None) -> IO[bytes]:
        handle = open(uri, "rb")  # noqa: SIM115 - returned to the caller
        handle.seek(start)
        if end is None:
            return handle
        return _LimitedReader(handle, end - start)  # type: ignore[return-value]

    def read_bytes(self, uri: str) -> bytes:
        try:
            return Path(uri).read_bytes()
        except OSError as exc:
            raise StorageError(f"cannot read {uri}: {exc}") from exc

    def read_if_exists(self, uri: str) -> bytes | None:
        try:
            return Path(uri).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot read {uri}: {exc}") from exc

    def exists(self, uri: str) -> bool:
        return Path(uri).exists()

    def put_bytes(self, uri: str, data: bytes, *, if_absent: bool = False) -> bool:
        path = Path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        try:
            if not if_absent:
                os.replace(tmp, path)
                return True
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            return True
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def upload_file(self, path: Path, uri: str) -> None:
        target = Path(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)

    def delete(self, uri: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            Path(uri).unlink()


class _LimitedReader:
    """A read-only view of the next `limit` bytes of a binary file."""

    def __init__(self, raw: IO[bytes], limit: int) -> None:
        self._raw = raw
        self._left = limit

    def read(self, size: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        size = self._left if size < 0 else min(size, self._left)
        data = self._raw.read(size)
        self._left -= len(data)
        return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> _LimitedReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class S3Store:
    """Objects behind an S3 API, through one boto3 client per store.

    `credentials` (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, optionally AWS_SESSION_TOKEN)
    replace the process's own, e.g. those of the Secret a RewriteJob names."""

    def __init__(
        self,
        settings: S3Settings,
        credentials: Mapping[str, str] | None = None,
        max_pool_connections: int = 10,
        timeouts: S3Timeouts | None = None,
    ) -> None:
        import boto3
        from botocore.config import Config

        limits = timeouts or S3Timeouts()
        config = Config(
            retries={"max_attempts": limits.retries, "mode": "standard"},
            max_pool_connections=max_pool_connections,
            connect_timeout=limits.connect,
            read_timeout=limits.read,
        )
        keys = credentials or {}
        self._client: Any = boto3.client(
            "s3",
            endpoint_url=settings.endpoint_url,
            region_name=settings.region,
            aws_access_key_id=keys.get("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=keys.get("AWS_SECRET_ACCESS_KEY"),
            aws_session_token=keys.get("AWS_SESSION_TOKEN"),
            config=config,
        )

    def list(self, prefix: str) -> list[ObjectInfo]:
        bucket, key = split_s3(prefix)
        paginator = self._client.get_paginator("list_objects_v2")
        infos = []
        try:
            for page in paginator.paginate(Bucket=bucket, Prefix=key):
                for item in page.get("Contents", []):
                    infos.append(
                        ObjectInfo(f"s3://{bucket}/{item['Key']}", int(item["Size"]), item["ETag"])
                    )
        except (self._client.exceptions.ClientError, BotoCoreError) as exc:
            raise StorageError(f"cannot list {prefix}: {exc}") from exc
        infos.sort(key=lambda info: info.uri)
        return infos

    def list_after(self, prefix: str, after: str, limit: int) -> Listing:
        """At most `limit` objects under `prefix` whose URI sorts after `after`, in order:
        one LIST request."""
        bucket, key = split_s3(prefix)
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": key, "MaxKeys": limit}
        if after:
            kwargs["StartAfter"] = split_s3(after)[1]
        page = self._client.list_objects_v2(**kwargs)
        return [
            ObjectInfo(f"s3://{bucket}/{item['Key']}", int(item["Size"]), item["ETag"])
            for item in page.get("Contents", [])
        ]

    def size(self, uri: str) -> int:
        bucket, key = split_s3(uri)
        try:
            head = self._client.head_object(Bucket=bucket, Key=key)
        except (self._client.exceptions.ClientError, BotoCoreError) as exc:
            raise StorageError(f"cannot stat {uri}: {exc}") from exc
        return int(head["ContentLength"])

    def open_range(self, uri: str, start: int = 0, end: int | None = None) -> IO[bytes]:
        bucket, key = split_s3(uri)
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if start > 0 or end is not None:
            if end is not None and end <= start:
                return io.BytesIO(b"")
            kwargs["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        try:
            body = self._client.get_object(**kwargs)["Body"]
        except (self._client.exceptions.ClientError, BotoCoreError) as exc:
            raise StorageError(f"cannot read {uri}: {exc}") from exc
        return body  # type: ignore[no-any-return]

    def read_bytes(self, uri: str) -> bytes:
        with contextlib.closing(self.open_range(uri)) as body:
            try:
                return body.read()
            except (BotoCoreError, OSError) as exc:
                raise StorageError(f"cannot read {uri}: {exc}") from exc

    def read_if_exists(self, uri: str) -> bytes | None:
        try:
            return self.read_bytes(uri)
        except StorageError as exc:
            if isinstance(exc.__cause__, self._client.exceptions.ClientError) and _not_found(
                exc.__cause__
            ):
                return None
            raise

    def exists(self, uri: str) -> bool:
        bucket, key = split_s3(uri)
        try:
            self._client.head_object(Bucket=bucket, Key=key)
        except self._client.exceptions.ClientError as exc:
            if _not_found(exc):
                return False
            raise StorageError(f"cannot stat {uri}: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"cannot stat {uri}: {exc}") from exc
        return True

    def put_bytes(self, uri: str, data: bytes, *, if_absent: bool = False) -> bool:
        """Write the object; with `if_absent`, False when it exists already (412). A 412 can
        also answer a retry of a put that landed: callers that must know read it back."""
        bucket, key = split_s3(uri)
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key, "Body": data}
        if if_absent:
            kwargs["IfNoneMatch"] = "*"
        for attempt in range(CONFLICT_ATTEMPTS):
            try:
                self._client.put_object(**kwargs)
                return True
            except self._client.exceptions.ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if if_absent and code == "PreconditionFailed":
                    return False
                if code != "ConditionalRequestConflict" or attempt + 1 == CONFLICT_ATTEMPTS:
                    raise StorageError(f"cannot write {uri}: {exc}") from exc
            except BotoCoreError as exc:
                raise StorageError(f"cannot write {uri}: {exc}") from exc
            time.sleep(0.2 * 2**attempt)
        raise AssertionError("unreachable")

    def upload_file(self, path: Path, uri: str) -> None:
        bucket, key = split_s3(uri)
        self._client.upload_file(str(path), bucket, key)

    def delete(self, uri: str) -> None:
        bucket, key = split_s3(uri)
        self._client.delete_object(Bucket=bucket, Key=key)


def create_object(store: Store, uri: str, data: bytes) -> bytes | None:
    """Create `uri` holding `data` unless it exists: None when `data` is what it holds now
    (created by this call, or by an earlier try of it whose answer was lost: a retried
    put-if-absent then sees 412), else the bytes another writer put there. An ambiguous
    outcome (refused or failed) is settled by reading the object back; when nothing can be
    read, the StorageError is raised and nothing is assumed."""
    try:
        if store.put_bytes(uri, data, if_absent=True):
            return None
    except StorageError:
        existing = _read_if_there(store, uri)
        if existing is None:
            raise
        return None if existing == data else existing
    existing = _read_if_there(store, uri)
    if existing is None:
        raise StorageError(f"{uri}: the conditional put was refused but nothing is there")
    return None if existing == data else existing


def _read_if_there(store: Store, uri: str) -> bytes | None:
    try:
        return store.read_if_exists(uri)
    except StorageError:
        return None


def _not_found(exc: Any) -> bool:
    """Whether an S3 client error says the object does not exist (HEAD says 404, GET NoSuchKey)."""
    return exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}


_S3_STORES: dict[S3Settings, S3Store] = {}


def store_for(uri: str, s3: S3Settings | None = None) -> Store:
    """The store that serves `uri`; S3 clients are shared per settings."""
    check_scheme(uri)
    if not is_s3(uri):
        return LocalStore()
    settings = s3 or S3Settings()
    if settings not in _S3_STORES:
        _S3_STORES[settings] = S3Store(settings)
    return _S3_STORES[settings]


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def iter_lines_with_offsets(
    stream: IO[bytes], base: int, chunk_size: int = 1 << 20
) -> Iterator[tuple[int, bytes]]:
    """Yield (absolute offset, line without its newline) from a binary stream, in bounded memory."""
    pending = b""
    offset = base
    while True:
        chunk = stream.read(chunk_size)
        if not chunk:
            break
        pending += chunk
        start = 0
        while True:
            newline = pending.find(b"\n", start)
            if newline < 0:
                break
            yield offset, pending[start:newline]
            offset += newline + 1 - start
            start = newline + 1
        pending = pending[start:]
    if pending:
        yield offset, pending
