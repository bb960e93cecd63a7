"""Pytest fixtures for the real services tests use (S3 server)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator

import boto3
import pytest

from tests.support import s3server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[s3server.S3Server]:
    """A moto S3 server on loopback for the whole session; its env is exported for workers."""
    server, proc = s3server.start()
    saved = {key: os.environ.get(key) for key in server.env()}
    os.environ.update(server.env())
    try:
        yield server
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        s3server.stop(proc)


@pytest.fixture()
def s3_bucket(s3_server: s3server.S3Server, request: pytest.FixtureRequest) -> str:
    """A fresh, empty bucket per test, named after the test (a hash of the whole name keeps
    parametrized cases with a long common prefix apart)."""
    node = request.node.name.lower()
    name = "t-" + "".join(c if c.isalnum() else "-" for c in node)[:44].strip("-")
    name = f"{name}-{hashlib.sha256(node.encode()).hexdigest()[:8]}"
    client = boto3.client("s3", endpoint_url=s3_server.endpoint, region_name=s3server.REGION)
    client.create_bucket(Bucket=name)
    return name
