"""How the operator reaches a job's S3: with the credentials of the Secret the spec names.

Workers get that Secret as environment variables; the operator reads the same Secret through
the API and builds its own client per job, so one operator serves jobs whose data lives in
different accounts. Without a Secret, boto3's own resolution applies (workload identity).
Local paths work too (for tests and local runs).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, Final

from palimpsest.commit import MARKERS, Marker, read_marker
from palimpsest.jobspec import StorageSpec
from palimpsest.storage import S3_MAX_ATTEMPTS, LocalStore, S3Store, Store, is_s3, join, split_s3

_MARKER_NAME: Final = re.compile(r"shard-(\d+)\.json$")


class CredentialedS3Store(S3Store):
    """An S3Store whose client uses explicit credentials instead of the process's own."""

    def __init__(self, storage: StorageSpec, credentials: Mapping[str, str]) -> None:
        import boto3
        from botocore.config import Config

        config = Config(
            retries={"max_attempts": S3_MAX_ATTEMPTS, "mode": "standard"}, max_pool_connections=32
        )
        self._client: Any = boto3.client(
            "s3",
            endpoint_url=storage.endpoint,
            region_name=storage.region,
            aws_access_key_id=credentials.get("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=credentials.get("AWS_SECRET_ACCESS_KEY"),
            aws_session_token=credentials.get("AWS_SESSION_TOKEN"),
            config=config,
        )

    @property
    def client(self) -> Any:
        return self._client


class JobStorage:
    """One job's store, plus the marker reads and listings the status tick needs."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def read_marker(self, stage_uri: str, shard: int) -> Marker | None:
        return read_marker(self.store, stage_uri, shard)

    def list_marker_shards(self, stage_uri: str, after: int, limit: int) -> list[int]:
        """Shard numbers of committed markers greater than `after`, ascending, at most `limit`."""
        prefix = join(stage_uri, MARKERS) + "/"
        start = f"shard-{after:06d}.json" if after >= 0 else ""
        if isinstance(self.store, S3Store):
            return self._list_s3(prefix, start, limit)
        return self._list_local(prefix, start, limit)

    def _list_s3(self, prefix: str, start: str, limit: int) -> list[int]:
        bucket, key = split_s3(prefix)
        client: Any = self.store._client  # type: ignore[attr-defined]
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": key, "MaxKeys": limit}
        if start:
            kwargs["StartAfter"] = key + start
        page = client.list_objects_v2(**kwargs)
        return _shards(item["Key"] for item in page.get("Contents", []))[:limit]

    @staticmethod
    def _list_local(prefix: str, start: str, limit: int) -> list[int]:
        try:
            names = sorted(os.listdir(prefix))
        except FileNotFoundError:
            return []
        return _shards(n for n in names if n > start)[:limit]


def _shards(keys: Any) -> list[int]:
    out = []
    for key in keys:
        match = _MARKER_NAME.search(str(key))
        if match:
            out.append(int(match.group(1)))
    return sorted(out)


def job_storage(
    uri: str, storage: StorageSpec, credentials: Mapping[str, str] | None
) -> JobStorage:
    """The storage of a job whose output is `uri`, with the Secret's credentials if any."""
    if not is_s3(uri):
        return JobStorage(LocalStore())
    if credentials:
        return JobStorage(CredentialedS3Store(storage, credentials))
    from palimpsest.storage import store_for

    return JobStorage(store_for(uri, storage.s3_settings()))
