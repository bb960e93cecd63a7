"""Fixtures of the end-to-end tests: a namespace per test and an operator watching it."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.fixtures import Cluster
from tests.e2e.rewritejobs import CRD, Operator, service_account_kubeconfig


@pytest.fixture()
def namespace(k8s_cluster: Cluster) -> Iterator[str]:
    k8s_cluster.kubectl("apply", "-f", str(CRD))
    k8s_cluster.kubectl("wait", "--for=condition=Established", "crd/rewritejobs.palimpsest.dev")
    name = f"rwj-{uuid.uuid4().hex[:8]}"
    k8s_cluster.s3_namespace(name)
    try:
        yield name
    finally:
        k8s_cluster.kubectl("delete", "rwj", "--all", "-n", name, "--wait=false", check=False)
        k8s_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
        k8s_cluster.kubectl("delete", "clusterrole", f"palimpsest-operator-{name}", check=False)


@pytest.fixture()
def operator(k8s_cluster: Cluster, namespace: str, tmp_path: Path) -> Iterator[Operator]:
    kubeconfig = service_account_kubeconfig(k8s_cluster, namespace, tmp_path / "kubeconfig")
    running = Operator(k8s_cluster, namespace, tmp_path / "operator.log", kubeconfig)
    running.start()
    try:
        yield running
    finally:
        # delete the jobs while the operator runs, so that it releases its finalizer
        k8s_cluster.kubectl(
            "delete", "rwj", "--all", "-n", namespace, "--timeout=60s", check=False, timeout=90
        )
        running.stop()
        # on failure, the log is the first thing to read
        sys.stdout.write(running.log.read_text(errors="replace")[-4000:])
