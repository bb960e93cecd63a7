"""Pytest fixtures for the test cluster, on the same code as `make cluster-up`.

`k8s_cluster` (session scope) reuses a cluster that is already up (one started by hand with
`make cluster-up`, or by another test session in this checkout) and otherwise starts one; a
cluster started by tests is stopped when the last session using it ends, one started by hand
stays up. It also exports the cluster's variables (KUBECONFIG, PATH with kubectl and
helm, the S3 endpoint and credentials) to os.environ for the session, as `source
.cluster/env` does in a shell.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cluster import clusterctl


@dataclass(frozen=True)
class Cluster:
    """A running test cluster, as a test uses it."""

    info: clusterctl.ClusterInfo
    env: dict[str, str]

    @property
    def kubeconfig(self) -> Path:
        return Path(self.info.kubeconfig)

    @property
    def s3_endpoint(self) -> str:
        return self.info.s3_endpoint

    @property
    def bucket(self) -> str:
        return self.info.bucket

    def run(
        self, *argv: str, check: bool = True, timeout: float = 120, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a command (kubectl, helm, ...) with the cluster's environment."""
        return subprocess.run(
            list(argv),
            env=self.env,
            check=check,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )

    def kubectl(
        self, *args: str, check: bool = True, timeout: float = 120, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return self.run("kubectl", *args, check=check, timeout=timeout, input=input)

    def helm(
        self, *args: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        return self.run("helm", *args, check=check, timeout=timeout)

    def s3_namespace(self, namespace: str, secret: str = "s3-creds") -> None:
        """Create a namespace holding a Secret with the S3 server's credentials."""
        self.kubectl("create", "namespace", namespace)
        self.kubectl(
            "create",
            "secret",
            "generic",
            secret,
            "-n",
            namespace,
            f"--from-literal=AWS_ACCESS_KEY_ID={self.env['AWS_ACCESS_KEY_ID']}",
            f"--from-literal=AWS_SECRET_ACCESS_KEY={self.env['AWS_SECRET_ACCESS_KEY']}",
        )

    def apply(
        self, manifest: str, namespace: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        extra: Sequence[str] = ("-n", namespace) if namespace else ()
        return self.kubectl("apply", *extra, "-f", "-", input=manifest)


@pytest.fixture(scope="session")
def k8s_cluster() -> Iterator[Cluster]:
    try:
        info = clusterctl.attach()
    except RuntimeError as error:
        pytest.fail(str(error), pytrace=False)
    env = info.env()
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        yield Cluster(info=info, env={**os.environ, **env})
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        clusterctl.detach()
