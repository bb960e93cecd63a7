"""A test kubelet: fake CPU and GPU pool nodes whose pods run as local processes.

The operator schedules rewrite workers onto a GPU node pool and filter workers onto a CPU
pool; testing that needs nodes the real scheduler can place pods on, with the labels,
capacities and taints of those pools, and something that then runs the pods. This process
registers the nodes, keeps them Ready (node status plus a Lease renewed every few seconds,
which is what the node lifecycle controller watches), watches the pods bound to them and
runs each through podrunner.PodRunner. It also serves `kubectl logs` for those pods.

Run as: python -m tests.cluster.kubelet --kubeconfig K --api-server URL --ca-file CA
--state-dir DIR --repo DIR --port N --tls-cert C --tls-key K.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import os
import signal
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client import V1Pod
from kubernetes.client.exceptions import ApiException

from tests.cluster.podenv import POD_IP, ObjectSource
from tests.cluster.podrunner import (
    KubeletContext,
    PodRunner,
    config_map_reader,
    now,
    secret_reader,
)
from tests.cluster.volumes import TokenSource

log = logging.getLogger("kubelet")

POOL_LABEL = "palimpsest.dev/pool"
GPU_RESOURCE = "nvidia.com/gpu"
LEASE_NAMESPACE = "kube-node-lease"
LEASE_SECONDS = 40
LEASE_RENEW_EVERY = 10.0
STATUS_EVERY = 60.0
SMP = "application/strategic-merge-patch+json"


@dataclass(frozen=True)
class FakeNode:
    """A node of one pool: name, labels, capacity (also allocatable) and taints."""

    name: str
    pool: str
    capacity: dict[str, str]
    taints: tuple[dict[str, str], ...] = ()
    extra_labels: dict[str, str] = field(default_factory=dict)

    def labels(self) -> dict[str, str]:
        return {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "node.kubernetes.io/instance-type": f"palimpsest-test-{self.pool}",
            POOL_LABEL: self.pool,
            **self.extra_labels,
        }


CPU_NODE = FakeNode(
    name="palimpsest-cpu-0",
    pool="cpu",
    capacity={"cpu": "32", "memory": "128Gi", "pods": "110", "ephemeral-storage": "500Gi"},
)
GPU_NODE = FakeNode(
    name="palimpsest-gpu-0",
    pool="gpu",
    capacity={
        "cpu": "64",
        "memory": "512Gi",
        "pods": "110",
        "ephemeral-storage": "1Ti",
        GPU_RESOURCE: "8",
    },
    taints=({"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"},),
    extra_labels={
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": "palimpsest-fake-gpu",
    },
)
NODES = (CPU_NODE, GPU_NODE)


def micro_time() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- nodes ----------------------------------------------------------------------------------


class NodeAgent:
    """Registers the fake nodes and keeps them Ready: leases often, full status now and then."""

    def __init__(
        self, core: client.CoreV1Api, leases: client.CoordinationV1Api, port: int, version: str
    ) -> None:
        self.core = core
        self.leases = leases
        self.port = port
        self.version = version
        self.since = now()

    def register(self, node: FakeNode) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": node.name, "labels": node.labels()},
            "spec": {"taints": list(node.taints)},
        }
        try:
            self.core.create_node(body)
        except ApiException as error:
            if error.status != 409:
                raise
            patch = {"metadata": {"labels": node.labels()}, "spec": {"taints": list(node.taints)}}
            self.core.patch_node(node.name, patch, _content_type="application/merge-patch+json")
        self.report_status(node)
        self.renew_lease(node)

    def report_status(self, node: FakeNode) -> None:
        heartbeat = now()
        conditions = [
            ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            ("PIDPressure", "False", "KubeletHasSufficientPID"),
            ("Ready", "True", "KubeletReady"),
        ]
        status = {
            "capacity": node.capacity,
            "allocatable": node.capacity,
            "conditions": [
                {
                    "type": kind,
                    "status": value,
                    "reason": reason,
                    "lastHeartbeatTime": heartbeat,
                    "lastTransitionTime": self.since,
                }
                for kind, value, reason in conditions
            ],
            "addresses": [
                {"type": "InternalIP", "address": POD_IP},
                {"type": "Hostname", "address": node.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}},
            "nodeInfo": {
                "machineID": node.name,
                "systemUUID": node.name,
                "bootID": node.name,
                "kernelVersion": os.uname().release,
                "osImage": "palimpsest test kubelet (pods run as local processes)",
                "containerRuntimeVersion": "local://1",
                "kubeletVersion": self.version,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }
        self.core.patch_node_status(node.name, {"status": status}, _content_type=SMP)

    def renew_lease(self, node: FakeNode) -> None:
        spec = {
            "holderIdentity": node.name,
            "leaseDurationSeconds": LEASE_SECONDS,
            "renewTime": micro_time(),
        }
        try:
            self.leases.patch_namespaced_lease(
                node.name,
                LEASE_NAMESPACE,
                {"spec": spec},
                _content_type="application/merge-patch+json",
            )
        except ApiException as error:
            if error.status != 404:
                raise
            uid = self.core.read_node(node.name).metadata.uid
            owner = {"apiVersion": "v1", "kind": "Node", "name": node.name, "uid": uid}
            body = {"metadata": {"name": node.name, "ownerReferences": [owner]}, "spec": spec}
            self.leases.create_namespaced_lease(LEASE_NAMESPACE, body)

    def keep_alive(self, stop: threading.Event) -> None:
        last_status = time.monotonic()
        while not stop.wait(LEASE_RENEW_EVERY):
            full = time.monotonic() - last_status >= STATUS_EVERY
            for node in NODES:
                try:
                    self.renew_lease(node)
                    if full:
                        self.report_status(node)
                except ApiException as error:
                    if error.status == 404:
                        self.register(node)  # someone deleted the node: bring it back
                    else:
                        log.warning("heartbeat for %s failed: %s", node.name, error.reason)
                except Exception:
                    log.exception("heartbeat for %s failed", node.name)
            if full:
                last_status = time.monotonic()


# -- pods -----------------------------------------------------------------------------------


class PodManager:
    """Starts a runner for each pod bound to our nodes and relays deletions to it."""

    def __init__(self, ctx: KubeletContext, node_names: set[str]) -> None:
        self.ctx = ctx
        self.node_names = node_names
        self.runners: dict[str, PodRunner] = {}
        self._lock = threading.Lock()

    def ours(self, pod: V1Pod) -> bool:
        return bool(pod.spec and pod.spec.node_name in self.node_names)

    def handle(self, kind: str, pod: V1Pod) -> None:
        if not self.ours(pod):
            return
        uid = pod.metadata.uid
        with self._lock:
            runner = self.runners.get(uid)
            if kind == "DELETED":
                if runner is not None:
                    runner.forget()
                    self.runners.pop(uid, None)
                return
            if runner is not None:
                runner.pod = (
                    pod
                    if runner.pod.metadata.resource_version != pod.metadata.resource_version
                    else runner.pod
                )
                self._relay_deletion(runner, pod)
                return
            if pod.status and pod.status.phase in ("Succeeded", "Failed"):
                return
            runner = PodRunner(pod, self.ctx)
            self.runners[uid] = runner
        self._relay_deletion(runner, pod)
        log.info(
            "starting pod %s/%s on %s",
            pod.metadata.namespace,
            pod.metadata.name,
            pod.spec.node_name,
        )
        runner.start()

    @staticmethod
    def _relay_deletion(runner: PodRunner, pod: V1Pod) -> None:
        if pod.metadata.deletion_timestamp is not None:
            grace = pod.metadata.deletion_grace_period_seconds
            runner.request_stop(30 if grace is None else grace)

    def resync(self, pods: list[V1Pod]) -> None:
        """After a relist: forget pods that vanished while we were not watching."""
        present = {pod.metadata.uid for pod in pods}
        with self._lock:
            gone = [uid for uid in self.runners if uid not in present]
            for uid in gone:
                self.runners.pop(uid).forget()

    def find(self, namespace: str, name: str) -> PodRunner | None:
        with self._lock:
            matches = [
                runner
                for runner in self.runners.values()
                if runner.pod.metadata.namespace == namespace and runner.pod.metadata.name == name
            ]
        return matches[-1] if matches else None

    def shutdown(self) -> None:
        with self._lock:
            runners = list(self.runners.values())
        for runner in runners:
            runner.kill_all()

    def watch_forever(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                listing = self.ctx.core.list_pod_for_all_namespaces()
                pods = [pod for pod in listing.items if self.ours(pod)]
                self.resync(pods)
                for pod in pods:
                    self.handle("ADDED", pod)
                self._watch(listing.metadata.resource_version, stop)
            except Exception:
                log.exception("pod watch failed; relisting")
                stop.wait(1.0)

    def _watch(self, resource_version: str, stop: threading.Event) -> None:
        watcher = watch.Watch()
        while not stop.is_set():
            stream = watcher.stream(
                self.ctx.core.list_pod_for_all_namespaces,
                resource_version=resource_version,
                timeout_seconds=120,
                allow_watch_bookmarks=True,
            )
            for event in stream:
                kind = event["type"]
                if kind == "ERROR":
                    return  # usually 410 Gone: relist
                if kind == "BOOKMARK":
                    resource_version = event["raw_object"]["metadata"]["resourceVersion"]
                    continue
                pod = event["object"]
                resource_version = pod.metadata.resource_version
                self.handle(kind, pod)
            resource_version = watcher.resource_version or resource_version


# -- logs -----------------------------------------------------------------------------------


class LogHandler(BaseHTTPRequestHandler):
    """Serves /containerLogs/<namespace>/<pod>/<container>, which `kubectl logs` reaches."""

    manager: PodManager

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        if len(parts) != 4 or parts[0] != "containerLogs":
            self.send_error(404, "only /containerLogs is served by the test kubelet")
            return
        _, namespace, pod, container = parts
        runner = self.manager.find(namespace, pod)
        path = runner.dir / "logs" / f"{container}.log" if runner else None
        if runner is None or path is None or not path.exists():
            self.send_error(404, f"no logs for {namespace}/{pod}/{container}")
            return
        query = urllib.parse.parse_qs(url.query)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        for chunk in self._chunks(path, runner, query):
            self.wfile.write(chunk)
            self.wfile.flush()

    @staticmethod
    def _chunks(path: Path, runner: PodRunner, query: dict[str, list[str]]) -> Iterator[bytes]:
        data = path.read_bytes()
        if "tailLines" in query:
            lines = data.splitlines(keepends=True)
            data = (
                b"".join(lines[-int(query["tailLines"][0]) :])
                if int(query["tailLines"][0])
                else b""
            )
        if "limitBytes" in query:
            data = data[: int(query["limitBytes"][0])]
        yield data
        if query.get("follow", ["false"])[0] != "true":
            return
        offset = path.stat().st_size
        while True:
            finished = runner.done.is_set()
            with open(path, "rb") as handle:
                handle.seek(offset)
                chunk = handle.read()
            offset += len(chunk)
            if chunk:
                yield chunk
            if finished:
                return
            time.sleep(0.5)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("logs: " + format, *args)


def serve_logs(manager: PodManager, port: int, cert: Path, key: Path) -> ThreadingHTTPServer:
    handler = type("BoundLogHandler", (LogHandler,), {"manager": manager})
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="logs", daemon=True).start()
    return server


# -- wiring ---------------------------------------------------------------------------------


def token_source(core: client.CoreV1Api, api_server: str, ca_file: Path) -> TokenSource:
    def request(pod: V1Pod, audience: str | None, seconds: int) -> str:
        spec: dict[str, Any] = {
            "expirationSeconds": seconds,
            "boundObjectRef": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": pod.metadata.name,
                "uid": pod.metadata.uid,
            },
        }
        if audience:
            spec["audiences"] = [audience]
        account = pod.spec.service_account_name or "default"
        response = core.create_namespaced_service_account_token(
            account, pod.metadata.namespace, {"spec": spec}
        )
        return str(response.status.token)

    return TokenSource(request=request, api_server=api_server, ca_file=ca_file)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--api-server", required=True, help="URL pods use to reach the API server")
    parser.add_argument("--ca-file", type=Path, required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True, help="port for kubectl logs")
    parser.add_argument("--tls-cert", type=Path, required=True)
    parser.add_argument("--tls-key", type=Path, required=True)
    parser.add_argument("--version", default="v0.0.0")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    api = config.new_client_from_config(str(args.kubeconfig))
    core = client.CoreV1Api(api)
    ctx = KubeletContext(
        core=core,
        repo=args.repo.resolve(),
        pods_dir=args.state_dir / "pods",
        objects=ObjectSource(secret=secret_reader(core), config_map=config_map_reader(core)),
        tokens=token_source(core, args.api_server, args.ca_file),
        environ=dict(os.environ),
    )
    ctx.pods_dir.mkdir(parents=True, exist_ok=True)
    manager = PodManager(ctx, {node.name for node in NODES})
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = serve_logs(manager, args.port, args.tls_cert, args.tls_key)
    agent = NodeAgent(core, client.CoordinationV1Api(api), args.port, args.version)
    try:
        for node in NODES:
            agent.register(node)
        threading.Thread(
            target=agent.keep_alive, args=(stop,), name="heartbeat", daemon=True
        ).start()
        log.info("nodes %s registered; watching pods", ", ".join(node.name for node in NODES))
        manager.watch_forever(stop)
    finally:
        stop.set()
        manager.shutdown()
        with contextlib.suppress(Exception):
            server.shutdown()


if __name__ == "__main__":
    main()
