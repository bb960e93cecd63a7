"""Turn a model reference into something vLLM can load: a name, a local path, or `s3://`.

Rewrite pods read their model from the job's own S3 store (no model hub is reachable from a
cluster, and a hub would be a second source of truth). An `s3://bucket/prefix` model is copied
once into a local cache directory and reused by every later engine start on the machine;
several pods on one node may race to fill it, so each copies into a private temporary
directory and the first to finish renames it into place.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Final

logger = logging.getLogger(__name__)

MODEL_CACHE_ENV: Final = "PALIMPSEST_MODEL_CACHE"
"""Environment variable naming the directory `s3://` models are downloaded into."""
DEFAULT_MODEL_CACHE: Final = Path.home() / ".cache" / "palimpsest" / "models"
COMPLETE_MARKER: Final = ".palimpsest-complete"
"""Written last into a downloaded model directory; a directory without it is ignored."""


def is_s3(model: str) -> bool:
    return model.startswith("s3://")


def resolve_model(model: str, cache_dir: str | None = None) -> str:
    """A name or path vLLM can load: `s3://` models are downloaded, others pass through."""
    if not is_s3(model):
        return model
    root = Path(cache_dir or os.environ.get(MODEL_CACHE_ENV) or DEFAULT_MODEL_CACHE)
    return str(download_s3_prefix(model, root))


def download_s3_prefix(url: str, cache_root: Path) -> Path:
    """Copy every object under `s3://bucket/prefix/` into a directory under `cache_root`."""
    bucket, prefix = _split_s3_url(url)
    target = cache_root / _cache_name(bucket, prefix)
    if (target / COMPLETE_MARKER).exists():
        logger.info("model %s already downloaded to %s", url, target)
        return target
    cache_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=cache_root))
    try:
        count = _download_all(_s3_client(), bucket, prefix, staging)
        if count == 0:
            raise FileNotFoundError(f"no objects under {url}")
        (staging / COMPLETE_MARKER).write_text(url + "\n", encoding="utf-8")
        _publish(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("model %s downloaded to %s (%d files)", url, target, count)
    return target


def _split_s3_url(url: str) -> tuple[str, str]:
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    if not bucket:
        raise ValueError(f"model URL {url!r} has no bucket")
    prefix = prefix.strip("/")
    return bucket, (prefix + "/" if prefix else "")


def _cache_name(bucket: str, prefix: str) -> str:
    # Readable and collision-free: the last path part plus a hash of the full location.
    digest = hashlib.sha256(f"{bucket}/{prefix}".encode()).hexdigest()[:16]
    tail = prefix.rstrip("/").rsplit("/", 1)[-1] or bucket
    return f"{tail}-{digest}"


def _s3_client() -> Any:
    import boto3

    # boto3 reads AWS_ENDPOINT_URL_S3 by itself too; passing it keeps that explicit.
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return boto3.client("s3", endpoint_url=endpoint or None)


def _download_all(client: Any, bucket: str, prefix: str, dest: Path) -> int:
    count = 0
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            key: str = obj["Key"]
            relative = key[len(prefix) :]
            if not relative or relative.endswith("/"):
                continue  # the prefix itself or a folder placeholder
            path = dest / relative
            if dest.resolve() not in path.resolve().parents:
                raise ValueError(f"object key {key!r} escapes the model directory")
            path.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, key, str(path))
            count += 1
    return count


def _publish(staging: Path, target: Path) -> None:
    try:
        staging.rename(target)
    except OSError:
        # Another process published first (the target exists and is not empty), or a stale
        # partial copy is in the way: keep a complete one, replace an incomplete one.
        if (target / COMPLETE_MARKER).exists():
            return
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
