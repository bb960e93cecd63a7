"""A real S3 endpoint on loopback for tests: moto's server in a child process.

Tests, the test cluster and `make cluster-up` all start S3 through this module, so every
caller gets the same endpoint shape and the same dummy credentials.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class S3Server:
    """A running moto server and how to reach it."""

    endpoint: str
    pid: int

    def env(self) -> dict[str, str]:
        """Variables that point boto3 (and our workers) at this endpoint."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
        }


def _wait_ready(endpoint: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                return
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.1)
    raise TimeoutError(f"moto server at {endpoint} not ready after {timeout}s")


def start(
    port: int | None = None,
    log_path: Path | None = None,
    timeout: float = 30.0,
    check_credentials: bool = False,
    command: Sequence[str] = (sys.executable, "-m", "moto.server"),
) -> tuple[S3Server, subprocess.Popen[bytes]]:
    """Start moto's server on loopback; returns the endpoint and the process to stop later.
    With `check_credentials` it refuses every key pair (403 InvalidAccessKeyId), as S3 does
    for keys it does not know. `command` runs the server (given -H and -p): moto's own, or a
    server built on it."""
    port = port or free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        [*command, "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=log,
        env={
            **os.environ,
            "MOTO_ALLOW_NONEXISTENT_REGION": "true",
            **({"INITIAL_NO_AUTH_ACTION_COUNT": "0"} if check_credentials else {}),
        },
        start_new_session=True,
    )
    _wait_ready(endpoint, proc, timeout)
    return S3Server(endpoint=endpoint, pid=proc.pid), proc


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
