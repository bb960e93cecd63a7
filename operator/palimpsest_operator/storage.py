"""How the operator reaches a job's S3: with the credentials of the Secret the spec names.

Workers get that Secret as environment variables; the operator reads the same Secret through
the API and builds its own client per job, so one operator serves jobs whose data lives in
different accounts. Without a Secret, boto3's own resolution applies (workload identity).
Local paths work too (for tests and local runs). Every client has short timeouts and few
attempts, so one tenant's unreachable endpoint fails its tick fast instead of holding it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Final

from palimpsest.commit import MARKERS, CorruptMarkerError, Marker, read_marker
from palimpsest.job import StorageSpec
from palimpsest.storage import LocalStore, S3Store, S3Timeouts, Store, digest, is_s3, join
from palimpsest_operator.config import CONFIG

_MARKER_NAME: Final = re.compile(r"shard-(\d+)\.json$")

QUARANTINE_DIR: Final = "_quarantine"
"""Under a stage's folder: unreadable markers moved aside, kept for inspection."""

TICK_S3: Final = S3Timeouts(CONFIG.s3_connect_timeout, CONFIG.s3_read_timeout, CONFIG.s3_retries)
"""The operator's S3 calls: short timeouts and few attempts (config.py says why)."""

MAX_POOL_CONNECTIONS: Final = 32
"""Connections per job's S3 client: markers are read by several threads at once."""


class JobStorage:
    """One job's store, plus the marker reads and listings the status tick needs."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def read_marker(self, stage_uri: str, shard: int) -> Marker | None:
        return read_marker(self.store, stage_uri, shard)

    def quarantine(self, stage_uri: str, error: CorruptMarkerError) -> str:
        """Move an unreadable marker aside (its shard then counts as not committed and runs
        again); returns where its bytes now are. The parts it may list are left alone."""
        data = self.store.read_bytes(error.uri)
        aside = join(stage_uri, QUARANTINE_DIR, f"shard-{error.shard:06d}-{digest(data)[:12]}.json")
        self.store.put_bytes(aside, data)
        self.store.delete(error.uri)
        return aside

    def list_marker_shards(self, stage_uri: str, after: int, limit: int) -> list[int]:
        """Shard numbers of committed markers greater than `after`, ascending, at most `limit`."""
        prefix = join(stage_uri, MARKERS) + "/"
        start = f"{prefix}shard-{after:06d}.json" if after >= 0 else ""
        return _shards(i.uri for i in self.store.list_after(prefix, start, limit))[:limit]


def _shards(keys: Iterable[str]) -> list[int]:
    out = []
    for key in keys:
        match = _MARKER_NAME.search(key)
        if match:
            out.append(int(match.group(1)))
    return sorted(out)


def job_storage(
    uri: str, storage: StorageSpec, credentials: Mapping[str, str] | None
) -> JobStorage:
    """The storage of a job whose output is `uri`, with the Secret's credentials if any."""
    if not is_s3(uri):
        return JobStorage(LocalStore())
    return JobStorage(
        S3Store(storage.s3_settings(), credentials or None, MAX_POOL_CONNECTIONS, TICK_S3)
    )
