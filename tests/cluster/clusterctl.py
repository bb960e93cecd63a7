"""Start and stop the test cluster: `python -m tests.cluster.clusterctl up|down|status`.

Integration and e2e tests need a real control plane (etcd, kube-apiserver with RBAC and
service-account tokens, kube-controller-manager, kube-scheduler), the test kubelet with its
CPU and GPU nodes, and an S3 endpoint, all on loopback. `make cluster-up`, `make
cluster-down` and the pytest fixtures all go through this module, so a cluster started by
hand is the same cluster the tests would start (and the tests reuse it).

Everything lives in <repo>/.cluster/: the kubeconfig and shell exports (`env`), certificates,
etcd's data, pid files, and component logs (kept after `down` for post-mortems, wiped by the
next `up`). `up` is idempotent; `down` stops every process it recorded, pods included.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import json
import os
import shlex
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import boto3
import yaml

from tests.cluster import kueue, node, pki, processes
from tests.support import s3server

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "tests" / "cluster" / "build.sh"
BUCKET = "palimpsest-test"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
CONTROLLERS = (
    "job-controller",
    "cronjob-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "ttl-after-finished-controller",
    "replicaset-controller",
    "deployment-controller",
    "statefulset-controller",
    "disruption-controller",
    "pod-garbage-collector-controller",
    "root-ca-certificate-publisher-controller",
    "clusterrole-aggregation-controller",
    "endpoints-controller",
    "endpointslice-controller",
    "node-lifecycle-controller",
    "taint-eviction-controller",
    "resourcequota-controller",
)
# Start order; `down` stops them in reverse.
COMPONENTS = (
    "s3",
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "containerd",
    "node-kubelet",
    "kueue",
)


@dataclass(frozen=True)
class Layout:
    """Where the cluster keeps its files, all under one directory."""

    root: Path

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def env_file(self) -> Path:
        return self.root / "env"

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def lock_file(self) -> Path:
        return self.root / ".lock"

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def etcd_data(self) -> Path:
        return self.root / "etcd-data"

    @property
    def kubelet(self) -> Path:
        return self.root / "kubelet"

    @property
    def users(self) -> Path:
        return self.root / "users"

    @property
    def node(self) -> node.NodeLayout:
        return node.NodeLayout(self.root / "node")

    @property
    def kueue(self) -> kueue.KueueLayout:
        return kueue.KueueLayout(self.root / "kueue")

    def pid_file(self, component: str) -> Path:
        return self.run / f"{component}.pid"

    def log_file(self, component: str) -> Path:
        return self.logs / f"{component}.log"


DEFAULT_LAYOUT = Layout(REPO / ".cluster")


@dataclass(frozen=True)
class Binaries:
    """The built binaries and their versions, as tests/cluster/build.sh reports them."""

    kubernetes_version: str
    etcd_version: str
    helm_version: str
    kueue_version: str
    k8s_bin: Path
    etcd_bin: Path
    helm_bin: Path
    kueue_bin: Path
    kueue_config: Path

    def missing(self) -> list[Path]:
        wanted = [
            self.k8s_bin / name
            for name in (
                "kube-apiserver",
                "kube-controller-manager",
                "kube-scheduler",
                "kubectl",
                "kubelet",
            )
        ]
        wanted += [self.etcd_bin / "etcd", self.helm_bin / "helm", self.kueue_bin / "kueue"]
        return [path for path in wanted if not os.access(path, os.X_OK)]

    @property
    def path_dirs(self) -> list[str]:
        return [str(self.k8s_bin), str(self.helm_bin), str(self.etcd_bin)]


def binaries() -> Binaries:
    output = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "--print-env"], check=True, capture_output=True, text=True
    ).stdout
    values = dict(line.split("=", 1) for line in output.splitlines() if "=" in line)
    return Binaries(
        kubernetes_version=values["K8S_VERSION"],
        etcd_version=values["ETCD_VERSION"],
        helm_version=values["HELM_VERSION"],
        kueue_version=values["KUEUE_VERSION"],
        k8s_bin=Path(values["K8S_BIN"]),
        etcd_bin=Path(values["ETCD_BIN"]),
        helm_bin=Path(values["HELM_BIN"]),
        kueue_bin=Path(values["KUEUE_BIN"]),
        kueue_config=Path(values["KUEUE_CONFIG"]),
    )


@dataclass(frozen=True)
class ClusterInfo:
    """A running cluster as tests and shells see it (saved in state.json)."""

    kubeconfig: str
    api_server: str
    s3_endpoint: str
    bucket: str
    kubernetes_version: str
    etcd_version: str
    helm_version: str
    path_dirs: list[str]
    ports: dict[str, int]
    kueue_version: str = ""
    # "manual" (`make cluster-up`: stays up until `make cluster-down`) or "tests" (a pytest
    # session: the last session using it stops it).
    started_by: str = "manual"

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """Variables that point kubectl, helm, Python clients and boto3 at this cluster."""
        base = os.environ if base is None else base
        path = ":".join([*self.path_dirs, base.get("PATH", "")])
        s3 = s3server.S3Server(endpoint=self.s3_endpoint, pid=0).env()
        return {
            "KUBECONFIG": self.kubeconfig,
            "PATH": path,
            **s3,
            "PALIMPSEST_TEST_BUCKET": self.bucket,
        }


# -- small helpers --------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[cluster] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def locked(layout: Layout) -> Iterator[None]:
    """One `up`/`down` at a time per checkout (tests and shells may race)."""
    layout.root.mkdir(parents=True, exist_ok=True)
    with open(layout.lock_file, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def wait_for(
    what: str,
    check: object,
    timeout: float,
    tracked: processes.Tracked | None = None,
    log_path: Path | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(check) and check():
            return
        if tracked is not None and not processes.is_alive(tracked):
            raise RuntimeError(f"{what}: process exited; see {log_path}\n{_tail(log_path)}")
        time.sleep(0.2)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s; see {log_path}\n{_tail(log_path)}")


def _tail(path: Path | None, lines: int = 20) -> str:
    if path is None or not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _client_context(layout: Layout, identity: pki.ClientIdentity = pki.ADMIN) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(layout.pki / "ca.crt"))
    context.load_cert_chain(
        str(layout.pki / f"{identity.file_stem}.crt"), str(layout.pki / f"{identity.file_stem}.key")
    )
    return context


def _https_ok(url: str, context: ssl.SSLContext) -> bool:
    try:
        with urllib.request.urlopen(url, context=context, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, OSError):
        return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, OSError):
        return False


def write_kubeconfig(path: Path, server: str, layout: Layout, identity: pki.ClientIdentity) -> Path:
    user = identity.user
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "palimpsest-test",
                "cluster": {"server": server, "certificate-authority": str(layout.pki / "ca.crt")},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate": str(layout.pki / f"{identity.file_stem}.crt"),
                    "client-key": str(layout.pki / f"{identity.file_stem}.key"),
                },
            }
        ],
        "contexts": [
            {"name": "palimpsest-test", "context": {"cluster": "palimpsest-test", "user": user}}
        ],
        "current-context": "palimpsest-test",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


# -- component command lines ----------------------------------------------------------------


def etcd_args(bins: Binaries, layout: Layout, ports: Mapping[str, int]) -> list[str]:
    client = f"http://127.0.0.1:{ports['etcd']}"
    peer = f"http://127.0.0.1:{ports['etcd-peer']}"
    return [
        str(bins.etcd_bin / "etcd"),
        "--name=palimpsest-test",
        f"--data-dir={layout.etcd_data}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=palimpsest-test={peer}",
        "--log-level=warn",
        # Test data is disposable: skip fsync so the shared disk does not slow the cluster.
        "--unsafe-no-fsync=true",
        "--quota-backend-bytes=2147483648",
    ]


def apiserver_args(bins: Binaries, layout: Layout, ports: Mapping[str, int]) -> list[str]:
    certs = layout.pki
    return [
        str(bins.k8s_bin / "kube-apiserver"),
        f"--etcd-servers=http://127.0.0.1:{ports['etcd']}",
        "--bind-address=127.0.0.1",
        f"--secure-port={ports['kube-apiserver']}",
        f"--tls-cert-file={certs / 'apiserver.crt'}",
        f"--tls-private-key-file={certs / 'apiserver.key'}",
        f"--client-ca-file={certs / 'ca.crt'}",
        "--authorization-mode=Node,RBAC",
        f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
        f"--service-account-key-file={certs / 'sa.pub'}",
        f"--service-account-signing-key-file={certs / 'sa.key'}",
        "--service-cluster-ip-range=10.96.0.0/16",
        # No Service IP routes here, and loopback is not a valid endpoint address.
        "--endpoint-reconciler-type=none",
        f"--kubelet-client-certificate={certs / 'apiserver-kubelet-client.crt'}",
        f"--kubelet-client-key={certs / 'apiserver-kubelet-client.key'}",
        "--kubelet-preferred-address-types=InternalIP",
        # The aggregation layer's request-header authentication, which components look up.
        f"--requestheader-client-ca-file={certs / 'front-proxy-ca.crt'}",
        f"--requestheader-allowed-names={pki.FRONT_PROXY_CLIENT}",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={certs / 'front-proxy-client.crt'}",
        f"--proxy-client-key-file={certs / 'front-proxy-client.key'}",
        "--allow-privileged=true",
        "--profiling=false",
        "--v=1",
    ]


def controller_manager_args(bins: Binaries, layout: Layout, ports: Mapping[str, int]) -> list[str]:
    kubeconfig = layout.run / "controller-manager.kubeconfig"
    return [
        str(bins.k8s_bin / "kube-controller-manager"),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={ports['kube-controller-manager']}",
        "--leader-elect=false",
        "--use-service-account-credentials=true",
        f"--controllers={','.join(CONTROLLERS)}",
        f"--service-account-private-key-file={layout.pki / 'sa.key'}",
        f"--root-ca-file={layout.pki / 'ca.crt'}",
        # Fast reactions keep the tests short.
        "--concurrent-job-syncs=10",
        "--profiling=false",
        "--v=1",
    ]


def scheduler_args(bins: Binaries, layout: Layout, ports: Mapping[str, int]) -> list[str]:
    kubeconfig = layout.run / "scheduler.kubeconfig"
    return [
        str(bins.k8s_bin / "kube-scheduler"),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={ports['kube-scheduler']}",
        "--leader-elect=false",
        "--profiling=false",
        "--v=1",
    ]


def kubelet_args(bins: Binaries, layout: Layout, ports: Mapping[str, int]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tests.cluster.kubelet",
        f"--kubeconfig={layout.run / 'kubelet.kubeconfig'}",
        f"--api-server=https://127.0.0.1:{ports['kube-apiserver']}",
        f"--ca-file={layout.pki / 'ca.crt'}",
        f"--state-dir={layout.kubelet}",
        f"--repo={REPO}",
        f"--port={ports['kubelet']}",
        f"--tls-cert={layout.pki / 'kubelet-serving.crt'}",
        f"--tls-key={layout.pki / 'kubelet-serving.key'}",
        f"--version={bins.kubernetes_version}",
    ]


# -- up / down / status ---------------------------------------------------------------------


def read_info(layout: Layout = DEFAULT_LAYOUT) -> ClusterInfo | None:
    try:
        return ClusterInfo(**json.loads(layout.state_file.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def component_states(layout: Layout) -> dict[str, bool]:
    states = {}
    for component in COMPONENTS:
        tracked = processes.read_pid_file(layout.pid_file(component))
        states[component] = tracked is not None and processes.is_alive(tracked)
    return states


def is_up(layout: Layout = DEFAULT_LAYOUT) -> bool:
    info = read_info(layout)
    if info is None or not all(component_states(layout).values()):
        return False
    return _https_ok(f"{info.api_server}/readyz", _client_context(layout))


def _allocate_ports() -> dict[str, int]:
    ports: dict[str, int] = {}
    for name in (
        "etcd",
        "etcd-peer",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kubelet",
        "node-kubelet",
        "kueue-webhook",
        "kueue-metrics",
        "kueue-health",
    ):
        port = s3server.free_port()
        while port in ports.values():
            port = s3server.free_port()
        ports[name] = port
    return ports


def _reset_dir(layout: Layout) -> None:
    for child in layout.root.iterdir():
        if child != layout.lock_file:
            shutil.rmtree(child) if child.is_dir() else child.unlink()


def _spawn(
    layout: Layout, component: str, argv: list[str], env: Mapping[str, str] | None = None
) -> processes.Tracked:
    return processes.spawn(
        component,
        argv,
        log_path=layout.log_file(component),
        pid_path=layout.pid_file(component),
        env=env,
        cwd=REPO,
    )


def _start_s3(layout: Layout) -> str:
    layout.logs.mkdir(parents=True, exist_ok=True)
    server, proc = s3server.start(log_path=layout.log_file("s3"))
    processes.write_pid_file(layout.pid_file("s3"), "s3", proc.pid)
    proc.returncode = 0  # it outlives this command; see processes.spawn
    client = boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        region_name=s3server.REGION,
        aws_access_key_id=s3server.ACCESS_KEY,
        aws_secret_access_key=s3server.SECRET_KEY,
    )
    client.create_bucket(Bucket=BUCKET)
    return server.endpoint


def _start_control_plane(layout: Layout, bins: Binaries, ports: Mapping[str, int]) -> str:
    tracked = _spawn(layout, "etcd", etcd_args(bins, layout, ports))
    wait_for(
        "etcd",
        lambda: _http_ok(f"http://127.0.0.1:{ports['etcd']}/health"),
        60,
        tracked,
        layout.log_file("etcd"),
    )
    api_server = f"https://127.0.0.1:{ports['kube-apiserver']}"
    tracked = _spawn(layout, "kube-apiserver", apiserver_args(bins, layout, ports))
    context = _client_context(layout)
    wait_for(
        "kube-apiserver",
        lambda: _https_ok(f"{api_server}/readyz", context),
        120,
        tracked,
        layout.log_file("kube-apiserver"),
    )
    write_kubeconfig(layout.kubeconfig, api_server, layout, pki.ADMIN)
    for stem, identity in (
        ("controller-manager", pki.CONTROLLER_MANAGER),
        ("scheduler", pki.SCHEDULER),
        ("kubelet", pki.KUBELET),
    ):
        write_kubeconfig(layout.run / f"{stem}.kubeconfig", api_server, layout, identity)
    _spawn(layout, "kube-controller-manager", controller_manager_args(bins, layout, ports))
    _spawn(layout, "kube-scheduler", scheduler_args(bins, layout, ports))
    kubelet_env = {**os.environ, "PYTHONPATH": str(REPO)}
    _spawn(layout, "kubelet", kubelet_args(bins, layout, ports), env=kubelet_env)
    _start_node(layout, bins, ports, api_server)
    return api_server


def _start_node(layout: Layout, bins: Binaries, ports: Mapping[str, int], api_server: str) -> None:
    """containerd and the real kubelet of node.NAME (see node.py)."""
    missing = node.missing_tools()
    if missing:
        raise RuntimeError(
            f"the real node needs {', '.join(missing)}: run `make host-deps` (Debian packages "
            f"{node.DEBIAN_PACKAGES})"
        )
    started = time.monotonic()
    nodes = layout.node
    node.write_configs(nodes, layout.pki, api_server, ports["node-kubelet"])
    node.record_host(nodes)
    write_kubeconfig(nodes.kubeconfig, api_server, layout, pki.NODE)
    node.start_containerd(nodes, lambda name, argv: _spawn(layout, name, argv), node.cache_dir())
    log(f"containerd ready in {time.monotonic() - started:.1f}s")
    _spawn(layout, "node-kubelet", node.kubelet_args(nodes, bins.k8s_bin, node.node_address()))


def _start_kueue(layout: Layout, bins: Binaries, ports: Mapping[str, int]) -> None:
    """Kueue's CRDs and manager, started while the nodes register (see _await_kueue)."""
    missing = kueue.missing_tools()
    if missing:
        raise RuntimeError(f"Kueue in the test cluster needs {', '.join(missing)} (util-linux)")
    certs = layout.pki
    kueue.write_files(
        layout.kueue,
        ports,
        certs / "kueue-serving.crt",
        certs / "kueue-serving.key",
        certs / "ca.crt",
        bins.kueue_config / "webhooks.yaml",
    )
    crds = str(bins.kueue_config / "crd")
    _kubectl_checked(bins, layout, "apply", "--server-side", "-f", crds)
    _kubectl_checked(bins, layout, "create", "namespace", kueue.NAMESPACE)
    _kubectl_checked(
        bins, layout, "wait", "--for=condition=Established", "--timeout=60s", "-f", crds
    )
    argv = kueue.manager_argv(bins.kueue_bin / "kueue", layout.kueue, layout.kubeconfig)
    _spawn(layout, "kueue", argv)


def _await_kueue(layout: Layout, bins: Binaries, ports: Mapping[str, int]) -> None:
    """Kueue serving its webhooks; only then are they registered with the API server."""
    wait_for(
        "kueue",
        lambda: _http_ok(f"http://127.0.0.1:{ports['kueue-health']}/readyz"),
        60,
        processes.read_pid_file(layout.pid_file("kueue")),
        layout.log_file("kueue"),
    )
    _kubectl_checked(bins, layout, "apply", "-f", str(layout.kueue.webhooks))


def _kubectl_checked(bins: Binaries, layout: Layout, *args: str) -> None:
    result = _kubectl(bins, layout, *args)
    if result.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")


def _kubectl(bins: Binaries, layout: Layout, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(bins.k8s_bin / "kubectl"), f"--kubeconfig={layout.kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def _wait_usable(layout: Layout, bins: Binaries) -> None:
    """Nodes Ready and the default service account present: pods can now be created."""

    def ready(*names: str) -> Callable[[], bool]:
        def check() -> bool:
            result = _kubectl(bins, layout, "get", "nodes", "-o", "json")
            if result.returncode != 0:
                return False
            conditions = {
                item["metadata"]["name"]: item["status"].get("conditions", [])
                for item in json.loads(result.stdout)["items"]
            }
            return all(
                any(c["type"] == "Ready" and c["status"] == "True" for c in conditions.get(n, []))
                for n in names
            )

        return check

    def default_account() -> bool:
        return (
            _kubectl(bins, layout, "get", "serviceaccount", "default", "-n", "default").returncode
            == 0
        )

    kubelet = processes.read_pid_file(layout.pid_file("kubelet"))
    fake = ready("palimpsest-cpu-0", "palimpsest-gpu-0")
    wait_for("test kubelet nodes", fake, 60, kubelet, layout.log_file("kubelet"))
    real = processes.read_pid_file(layout.pid_file("node-kubelet"))
    wait_for(node.NAME, ready(node.NAME), 60, real, layout.log_file("node-kubelet"))
    manager = processes.read_pid_file(layout.pid_file("kube-controller-manager"))
    wait_for(
        "default service account",
        default_account,
        60,
        manager,
        layout.log_file("kube-controller-manager"),
    )


def write_env_file(layout: Layout, info: ClusterInfo) -> None:
    env = info.env(base={"PATH": "$PATH"})
    lines = [
        "# Generated by tests/cluster/clusterctl.py: `source .cluster/env` to use the test cluster."
    ]
    for key, value in env.items():
        quoted = f'"{value}"' if key == "PATH" else shlex.quote(value)
        lines.append(f"export {key}={quoted}")
    layout.env_file.write_text("\n".join(lines) + "\n")


def up(layout: Layout = DEFAULT_LAYOUT, started_by: str = "manual") -> tuple[ClusterInfo, bool]:
    """Start the cluster unless it is already up; returns it and whether this call started it."""
    with locked(layout):
        return _up_locked(layout, started_by)


def _up_locked(layout: Layout, started_by: str) -> tuple[ClusterInfo, bool]:
    info = read_info(layout)
    if info is not None and is_up(layout):
        if started_by == "manual" and info.started_by != "manual":
            # Started by a test session, now wanted by hand: keep it up after the tests.
            info = dataclasses.replace(info, started_by="manual")
            layout.state_file.write_text(json.dumps(asdict(info), indent=2))
        return info, False
    _stop_all(layout)
    bins = binaries()
    missing = bins.missing()
    if missing:
        raise RuntimeError(
            "test cluster binaries are not built (missing: "
            + ", ".join(str(path) for path in missing)
            + "); run `make cluster-build` first (a cold build takes a while)"
        )
    started = time.monotonic()
    _reset_dir(layout)
    pki.generate(layout.pki)
    ports = _allocate_ports()
    try:
        s3_endpoint = _start_s3(layout)
        api_server = _start_control_plane(layout, bins, ports)
        _start_kueue(layout, bins, ports)
        _wait_usable(layout, bins)
        _await_kueue(layout, bins, ports)
    except BaseException:
        _stop_all(layout)
        raise
    info = ClusterInfo(
        kubeconfig=str(layout.kubeconfig),
        api_server=api_server,
        s3_endpoint=s3_endpoint,
        bucket=BUCKET,
        kubernetes_version=bins.kubernetes_version,
        etcd_version=bins.etcd_version,
        helm_version=bins.helm_version,
        kueue_version=bins.kueue_version,
        path_dirs=bins.path_dirs,
        ports=ports,
        started_by=started_by,
    )
    layout.state_file.write_text(json.dumps(asdict(info), indent=2))
    write_env_file(layout, info)
    elapsed = time.monotonic() - started
    log(f"up in {elapsed:.1f}s: Kubernetes {bins.kubernetes_version} at {api_server}")
    return info, True


def _drain_node(layout: Layout) -> None:
    """Delete the real node's pods while its kubelet runs, so that it tears them down."""
    info = read_info(layout)
    alive = component_states(layout)
    if info is None or not (alive["kube-apiserver"] and alive["node-kubelet"]):
        return
    bins = binaries()
    _kubectl(
        bins,
        layout,
        "delete",
        "pods",
        "--all-namespaces",
        f"--field-selector=spec.nodeName={node.NAME}",
        "--grace-period=0",
        "--force",
        "--wait=false",
    )
    node.wait_no_tasks(layout.node, 30)


def _stop_node(layout: Layout) -> None:
    """Stop the real node and remove what it put on the host."""
    _drain_node(layout)
    processes.stop_pid_file(layout.pid_file("node-kubelet"), grace=15)
    if processes.read_pid_file(layout.pid_file("containerd")) is not None:
        node.kill_tasks(layout.node)
    processes.stop_pid_file(layout.pid_file("containerd"), grace=15)
    node.clean_host(layout.node)


def _stop_all(layout: Layout) -> None:
    _stop_node(layout)
    for component in reversed(COMPONENTS):
        processes.stop_pid_file(
            layout.pid_file(component), grace=15 if component == "kubelet" else 10
        )
    # Pods whose kubelet died without cleaning up: their pid files are left in the pod dirs.
    for pid_file in sorted(layout.kubelet.glob("pods/*/*.pid")):
        processes.stop_pid_file(pid_file, grace=2)


def down(layout: Layout = DEFAULT_LAYOUT) -> None:
    """Stop every process of the cluster; keep the logs, drop the rest."""
    if not layout.root.exists():
        return
    with locked(layout):
        _down_locked(layout)


def _down_locked(layout: Layout) -> None:
    _stop_all(layout)
    for path in (layout.kubeconfig, layout.env_file, layout.state_file):
        path.unlink(missing_ok=True)
    for directory in (layout.etcd_data, layout.run, layout.pki, layout.users):
        shutil.rmtree(directory, ignore_errors=True)


# -- sessions sharing one cluster -----------------------------------------------------------


def _user_file(layout: Layout, pid: int) -> Path:
    return layout.users / f"{pid}.json"


def _live_users(layout: Layout) -> list[processes.Tracked]:
    live = []
    for path in sorted(layout.users.glob("*.json")):
        tracked = processes.read_pid_file(path)
        if tracked is not None and processes.is_alive(tracked):
            live.append(tracked)
        else:
            path.unlink(missing_ok=True)
    return live


def attach(layout: Layout = DEFAULT_LAYOUT) -> ClusterInfo:
    """Use the cluster from this process (a test session), starting it if it is not up.

    Test sessions in the same checkout may overlap; each registers itself, and a cluster a
    session started is stopped by `detach` only when no other live session still uses it.
    """
    with locked(layout):
        info, _ = _up_locked(layout, started_by="tests")
        processes.write_pid_file(_user_file(layout, os.getpid()), "session", os.getpid())
        return info


def detach(layout: Layout = DEFAULT_LAYOUT) -> bool:
    """Stop using the cluster; stops it if tests started it and nobody uses it. True if so."""
    with locked(layout):
        _user_file(layout, os.getpid()).unlink(missing_ok=True)
        info = read_info(layout)
        if info is None or info.started_by != "tests" or _live_users(layout):
            return False
        _down_locked(layout)
        return True


def status(layout: Layout = DEFAULT_LAYOUT) -> int:
    info = read_info(layout)
    states = component_states(layout)
    for component, alive in states.items():
        print(f"{component:24} {'running' if alive else 'stopped'}")
    if info is None:
        print("cluster: down")
        return 1
    ready = is_up(layout)
    state = "up" if ready else "degraded"
    print(f"cluster: {state} (Kubernetes {info.kubernetes_version}, API {info.api_server})")
    print(f"S3: {info.s3_endpoint} (bucket {info.bucket}); env: {layout.env_file}")
    return 0 if ready else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Start and stop the Palimpsest test cluster.")
    parser.add_argument("command", choices=("up", "down", "status"))
    args = parser.parse_args(argv)
    if args.command == "up":
        info, started = up()
        if not started:
            log(f"already up: Kubernetes {info.kubernetes_version} at {info.api_server}")
        log(f"use it with: source {DEFAULT_LAYOUT.env_file.relative_to(REPO)}")
        return 0
    if args.command == "down":
        down()
        log("down")
        return 0
    return status()


if __name__ == "__main__":
    sys.exit(main())
