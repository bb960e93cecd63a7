"""A real node in the test cluster: Debian's containerd and runc under a real kubelet.

The test kubelet (kubelet.py) runs pods as local processes, so it can say nothing about the
project's images: their user, entry point and writable paths, or a pod's securityContext
(read-only root, non-root uid, dropped capabilities), which only a container runtime
enforces. This module adds one real node, `palimpsest-node-0`, to the cluster: containerd
with a config of its own (root, state and socket under .cluster/node, runc with cgroupfs, a
local pause image as the sandbox image), the kubelet built by build.sh, and a CNI config
(Debian's bridge plugin; the node stays NotReady without one, even for hostNetwork pods).

The node is in the CPU pool but tainted (TAINT), so only pods that tolerate it land here;
every other pod keeps running on the test kubelet's nodes. Images are imported from OCI
archives (`ctr -n k8s.io images import`); nothing is ever pulled. Pods that must reach the
S3 server or the API server on the host's loopback use hostNetwork: bridged pods cannot.

`stop` leaves nothing behind: pods are deleted through the API first (the kubelet tears them
down), then leftover tasks, shims, mounts, cgroups, iptables chains and pod log folders the
node made are removed, and the whole node folder with them.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.cluster import pki, processes

NAME = pki.NODE_NAME
POOL_LABEL = "palimpsest.dev/pool"
TAINT = {"key": "palimpsest.dev/node", "value": "containerd", "effect": "NoSchedule"}
"""Keeps every pod that does not ask for this node (by tolerating it) on the test kubelet."""
TOLERATION = {"key": TAINT["key"], "operator": "Equal", "value": TAINT["value"]}
PAUSE_IMAGE = "localhost/palimpsest/pause:1"
"""The sandbox image: a static binary that waits for a signal, built here (nothing is pulled)."""
OCI_REF_NAME = "org.opencontainers.image.ref.name"
"""The annotation of an OCI index entry that names its image."""
CONTAINERD = "/usr/bin/containerd"
CTR = "/usr/bin/ctr"
# Seconds containerd may take to answer after it is started (first starts on a busy machine
# take several seconds before the socket exists).
CONTAINERD_START_SECONDS = 120
RUNC = "/usr/sbin/runc"
CNI_BIN = "/usr/lib/cni"
BRIDGE = "palimpsest0"
POD_LOG_DIRS = (Path("/var/log/pods"), Path("/var/log/containers"))
"""Where the kubelet writes container logs whatever its root directory (not configurable)."""
RUNTIME_DIRS = (Path("/run/containerd"), Path("/var/lib/cni"))
"""Where containerd's shims (sockets) and the CNI plugins (result cache) write regardless."""
CGROUP_ROOT = Path("/sys/fs/cgroup")
IPTABLES = ("iptables", "ip6tables")
DEBIAN_PACKAGES = "containerd containernetworking-plugins"

PAUSE_SOURCE = """// The sandbox process of the test node's pods: waits for SIGTERM, then exits.
package main

import (
\t"os"
\t"os/signal"
\t"syscall"
)

func main() {
\tdone := make(chan os.Signal, 1)
\tsignal.Notify(done, syscall.SIGTERM, syscall.SIGINT)
\t<-done
}
"""


@dataclass(frozen=True)
class NodeLayout:
    """Where the node keeps its files, all under one folder of the cluster's."""

    root: Path

    @property
    def containerd_config(self) -> Path:
        return self.root / "containerd.toml"

    @property
    def containerd_root(self) -> Path:
        return self.root / "containerd"

    @property
    def containerd_state(self) -> Path:
        return self.root / "containerd-state"

    @property
    def socket(self) -> Path:
        return self.root / "containerd.sock"

    @property
    def cni_conf(self) -> Path:
        return self.root / "cni"

    @property
    def kubelet_root(self) -> Path:
        return self.root / "kubelet"

    @property
    def kubelet_config(self) -> Path:
        return self.root / "kubelet.yaml"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubelet.kubeconfig"

    @property
    def before(self) -> Path:
        """What existed on the host before the node started (so `stop` removes only its own)."""
        return self.root / "host-before.json"


def cache_dir() -> Path:
    """The project's build cache (the pause image goes there), as build.sh names it."""
    return Path(os.environ.get("PALIMPSEST_CACHE", Path.home() / ".cache" / "palimpsest"))


def missing_tools() -> list[str]:
    return [
        path
        for path in (CONTAINERD, CTR, RUNC, f"{CNI_BIN}/bridge", f"{CNI_BIN}/host-local")
        if not os.access(path, os.X_OK)
    ]


def containerd_config(layout: NodeLayout) -> str:
    """containerd's config. restrict_oom_score_adj: runc may not lower oom_score_adj without
    CAP_SYS_RESOURCE, which every sandbox would otherwise try; no AppArmor on the host."""
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{layout.containerd_root}"
state = "{layout.containerd_state}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]

[grpc]
  address = "{layout.socket}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{layout.containerd_root}/opt"

[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        BinaryName = "{RUNC}"
        SystemdCgroup = false
  [{cri}.cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{layout.cni_conf}"
"""


def cni_config(layout: NodeLayout) -> dict[str, object]:
    """A bridge without masquerading (no iptables rules); its addresses kept in the node folder."""
    return {
        "cniVersion": "0.4.0",
        "name": "palimpsest",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": False,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": "10.244.0.0/24"}]],
                    "dataDir": str(layout.root / "cni-ipam"),
                },
            },
            {"type": "loopback"},
        ],
    }


def node_address() -> str:
    """Where the kubelet listens: the node's InternalIP (loopback if the host has no route)."""
    return pki.node_ip() or "127.0.0.1"


def kubelet_config(
    layout: NodeLayout, ca: Path, serving: pki.KeyPair, port: int, address: str
) -> dict[str, object]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # 1.35 refuses cgroup v1 unless told; this host has only v1.
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        # The node's InternalIP, where the API server connects for logs, exec, port-forward.
        "address": address,
        "port": port,
        "readOnlyPort": 0,
        "healthzPort": 0,
        "containerRuntimeEndpoint": f"unix://{layout.socket}",
        "volumePluginDir": str(layout.kubelet_root / "volume-plugins"),
        "tlsCertFile": str(serving.cert),
        "tlsPrivateKeyFile": str(serving.key),
        # Client certificates of the cluster's CA only (the API server's among them).
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(ca)},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "registerWithTaints": [TAINT],
        "failSwapOn": False,
        # A shared disk: never evict test pods or collect their images for disk pressure.
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
        },
        "imageGCHighThresholdPercent": 100,
        "serializeImagePulls": False,
        "nodeStatusReportFrequency": "10s",
        "resolvConf": "/etc/resolv.conf",
    }


def kubelet_args(layout: NodeLayout, k8s_bin: Path, address: str) -> list[str]:
    return [
        str(k8s_bin / "kubelet"),
        f"--config={layout.kubelet_config}",
        f"--kubeconfig={layout.kubeconfig}",
        f"--root-dir={layout.kubelet_root}",
        f"--hostname-override={NAME}",
        f"--node-ip={address}",
        f"--node-labels={POOL_LABEL}=cpu,palimpsest.dev/runtime=containerd",
        "--v=1",
    ]


# -- the pause image ------------------------------------------------------------------------


def pause_archive(cache: Path) -> Path:
    """An OCI archive of the pause image, built once (a static Go binary) and cached."""
    key = hashlib.sha256((PAUSE_SOURCE + PAUSE_IMAGE).encode()).hexdigest()[:12]
    folder = cache / f"pause-{key}"
    archive = folder / "pause.tar"
    if archive.exists():
        return archive
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        (Path(work) / "main.go").write_text(PAUSE_SOURCE)
        (Path(work) / "go.mod").write_text("module palimpsest.test/pause\n\ngo 1.26\n")
        env = {**os.environ, "CGO_ENABLED": "0", "GOTOOLCHAIN": "local", "GOFLAGS": ""}
        env.setdefault("GOCACHE", str(cache / "go" / "build-cache"))
        subprocess.run(
            ["go", "build", "-trimpath", "-ldflags=-s -w", "-o", f"{work}/pause", "."],
            cwd=work,
            env=env,
            check=True,
            capture_output=True,
            timeout=600,
        )
        binary = (Path(work) / "pause").read_bytes()
    partial = archive.with_suffix(".part")
    partial.write_bytes(oci_archive(PAUSE_IMAGE, {"pause": binary}, ["/pause"]))
    partial.rename(archive)
    return archive


def _tar(files: dict[str, bytes], mode: int = 0o755) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _blob(blobs: dict[str, bytes], media_type: str, data: bytes) -> dict[str, object]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs[f"blobs/sha256/{digest[7:]}"] = data
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def oci_archive(name: str, files: dict[str, bytes], entrypoint: list[str]) -> bytes:
    """A one-layer OCI image archive (uncompressed layer) named `name`, as ctr imports it."""
    layer = _tar(files)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": entrypoint},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]},
    }
    blobs: dict[str, bytes] = {}
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": _blob(
            blobs, "application/vnd.oci.image.config.v1+json", json.dumps(config).encode()
        ),
        "layers": [_blob(blobs, "application/vnd.oci.image.layer.v1.tar", layer)],
    }
    descriptor = _blob(
        blobs, "application/vnd.oci.image.manifest.v1+json", json.dumps(manifest).encode()
    )
    descriptor["annotations"] = {
        "io.containerd.image.name": name,
        OCI_REF_NAME: name.rsplit(":", 1)[1],
    }
    index = {"schemaVersion": 2, "manifests": [descriptor]}
    files_out = {
        "oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
        "index.json": json.dumps(index).encode(),
        **blobs,
    }
    return _tar(files_out, mode=0o644)


# -- start ----------------------------------------------------------------------------------


def ctr(layout: NodeLayout, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CTR, f"--address={layout.socket}", "--namespace=k8s.io", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def import_image(layout: NodeLayout, archive: Path) -> None:
    """Load an OCI archive into the node's containerd (the images the kubelet can run), unless
    the node holds its image already: the same manifest digest under a running cluster."""
    listed = ctr(layout, "images", "ls").stdout.splitlines()[1:]
    held = {f"{row[0]}@{row[2]}" for row in (line.split() for line in listed) if len(row) > 2}
    if _archive_digests(archive) <= held:
        return
    result = ctr(layout, "images", "import", str(archive), timeout=900)
    if result.returncode != 0:
        raise RuntimeError(f"ctr images import {archive}: {result.stderr.strip()}")


def _archive_digests(archive: Path) -> set[str]:
    """The names with digests (`name@sha256:...`) of the images an OCI archive holds."""
    with tarfile.open(archive) as tar:
        member = tar.extractfile("index.json")
        index = json.load(member) if member else {"manifests": []}
    names = [m.get("annotations", {}).get(OCI_REF_NAME) for m in index["manifests"]]
    if not names or None in names:
        return {f"unnamed@{archive}"}  # never held: imported
    return {f"{n}@{m['digest']}" for n, m in zip(names, index["manifests"], strict=True)}


def _cgroup_dirs() -> list[Path]:
    return sorted(CGROUP_ROOT.glob("*/kubepods"))


def _kube_chains() -> dict[str, list[str]]:
    """The KUBE-* chains per `<command> <table>`, as iptables-save lists them."""
    chains: dict[str, list[str]] = {}
    for command in IPTABLES:
        if shutil.which(f"{command}-save") is None:
            continue
        out = subprocess.run([f"{command}-save"], capture_output=True, text=True, timeout=30).stdout
        table = ""
        for line in out.splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith(":KUBE-"):
                chains.setdefault(f"{command} {table}", []).append(line[1:].split()[0])
    return chains


def record_host(layout: NodeLayout) -> None:
    """Note what the host already has, so that `stop` removes only what the node added."""
    state = {
        "log_entries": _log_entries(),
        "cgroups": [str(path) for path in _cgroup_dirs()],
        "chains": _kube_chains(),
        "dirs": [str(path) for path in RUNTIME_DIRS if path.exists()],
    }
    layout.before.write_text(json.dumps(state))


def write_configs(layout: NodeLayout, cluster_pki: Path, api_server: str, port: int) -> None:
    layout.root.mkdir(parents=True, exist_ok=True)
    layout.containerd_config.write_text(containerd_config(layout))
    layout.cni_conf.mkdir(exist_ok=True)
    (layout.cni_conf / "10-palimpsest.conflist").write_text(json.dumps(cni_config(layout)))
    serving = pki.KeyPair(cluster_pki / "kubelet-serving.crt", cluster_pki / "kubelet-serving.key")
    config = kubelet_config(layout, cluster_pki / "ca.crt", serving, port, node_address())
    layout.kubelet_config.write_text(yaml.safe_dump(config))


@contextlib.contextmanager
def _timed(label: str, log: Callable[[str], None]) -> Iterator[None]:
    started = time.monotonic()
    yield
    log(f"{label} in {time.monotonic() - started:.1f}s")


def start_containerd(
    layout: NodeLayout, spawn: Callable[[str, list[str]], processes.Tracked], cache: Path
) -> processes.Tracked:
    tracked = spawn("containerd", [CONTAINERD, f"--config={layout.containerd_config}"])
    deadline = time.monotonic() + CONTAINERD_START_SECONDS
    while not _answers(layout):
        if not processes.is_alive(tracked) or time.monotonic() > deadline:
            raise RuntimeError("containerd did not start; see .cluster/logs/containerd.log")
        time.sleep(0.2)
    import_image(layout, pause_archive(cache))
    return tracked


def _answers(layout: NodeLayout) -> bool:
    """True once containerd answers on its socket. Each probe is short: a ctr started before
    the socket exists backs off its dial for longer and longer, so one probe never waits."""
    if not layout.socket.exists():
        return False
    try:
        return ctr(layout, "--connect-timeout=2s", "version", timeout=10).returncode == 0
    except subprocess.TimeoutExpired:
        return False


# -- stop -----------------------------------------------------------------------------------


def _tasks(layout: NodeLayout, running_only: bool = False) -> list[str]:
    """Task ids (containers with a process, or a stopped one not yet deleted)."""
    if not layout.socket.exists():
        return []
    result = ctr(layout, "tasks", "ls", timeout=30)
    if result.returncode != 0:
        return []
    rows = [line.split() for line in result.stdout.splitlines()[1:] if line.strip()]
    return [row[0] for row in rows if not running_only or row[-1] != "STOPPED"]


def wait_no_tasks(layout: NodeLayout, timeout: float) -> bool:
    """Wait until no container process runs (the kubelet deletes stopped ones later)."""
    deadline = time.monotonic() + timeout
    while _tasks(layout, running_only=True):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def kill_tasks(layout: NodeLayout) -> None:
    """Kill and delete what the kubelet left running (containers survive their kubelet)."""
    for task in _tasks(layout, running_only=True):
        ctr(layout, "tasks", "kill", "--signal=SIGKILL", "--all", task, timeout=30)
    wait_no_tasks(layout, 10)
    for task in _tasks(layout):
        ctr(layout, "tasks", "delete", "--force", task, timeout=30)
    containers = ctr(layout, "containers", "ls", "-q", timeout=30).stdout.split()
    for container in containers:
        ctr(layout, "containers", "delete", container, timeout=30)


def _shim_pids(layout: NodeLayout) -> list[int]:
    """containerd's shims leave its session; they are found by the socket they were given."""
    needle = str(layout.socket).encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if b"containerd-shim" in (cmdline := (proc / "cmdline").read_bytes()) and (
                needle in cmdline
            ):
                pids.append(int(proc.name))
    return pids


def stop_shims(layout: NodeLayout) -> None:
    for pid in _shim_pids(layout):
        tracked = processes.Tracked("containerd-shim", pid, processes.start_time_of(pid) or 0)
        processes.stop(tracked, grace=5)


def unmount_under(root: Path) -> None:
    """Unmount everything mounted at or below `root`, deepest first."""
    prefix = str(root.resolve())
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point == prefix or point.startswith(prefix + "/"):
            mounts.append(point)
    for point in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, timeout=30)


def _log_entries() -> dict[str, list[str]]:
    return {
        str(path): sorted(entry.name for entry in path.iterdir())
        for path in POD_LOG_DIRS
        if path.is_dir()
    }


def remove_pod_logs(before: dict[str, Any]) -> None:
    """The pod log folders and symlinks the node's kubelet wrote (all that were not there
    before it started: the kubelet outlives its pods' own folders, so uids cannot tell)."""
    existed = before.get("log_entries", {})
    for path in POD_LOG_DIRS:
        if not path.is_dir():
            continue
        kept = set(existed.get(str(path), []))
        for entry in path.iterdir():
            if entry.name in kept:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        if str(path) not in existed:
            with contextlib.suppress(OSError):
                path.rmdir()


def remove_cgroups(before: dict[str, Any]) -> None:
    """The kubepods cgroup trees the kubelet made (leaves first; empty ones only)."""
    existed = before.get("cgroups", [])
    for top in _cgroup_dirs():
        if str(top) in existed:
            continue
        for folder in sorted(
            (p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
        ):
            with contextlib.suppress(OSError):
                folder.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()


def remove_chains(before: dict[str, Any]) -> None:
    """The KUBE-* iptables chains the kubelet added, with the rules that jump to them."""
    existed = before.get("chains", {})
    for where, chains in _kube_chains().items():
        command, table = where.split()
        new = [chain for chain in chains if chain not in existed.get(where, [])]
        rules = subprocess.run(
            [f"{command}-save", "-t", table], capture_output=True, text=True, timeout=30
        ).stdout.splitlines()
        for rule in rules:
            if rule.startswith("-A ") and any(f"-j {chain}" in rule for chain in new):
                subprocess.run([command, "-t", table, "-D", *rule[3:].split()], timeout=30)
        for chain in new:
            subprocess.run([command, "-t", table, "-F", chain], capture_output=True, timeout=30)
        for chain in new:
            subprocess.run([command, "-t", table, "-X", chain], capture_output=True, timeout=30)


def clean_host(layout: NodeLayout) -> None:
    """After containerd and the kubelet stopped: remove all the node put on the host."""
    try:
        before = json.loads(layout.before.read_text())
    except (OSError, ValueError):
        before = {}
    stop_shims(layout)
    unmount_under(layout.root)
    remove_pod_logs(before)
    remove_cgroups(before)
    remove_chains(before)
    subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True, timeout=30)
    if before:
        for path in RUNTIME_DIRS:
            if str(path) not in before.get("dirs", []):
                shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(layout.root, ignore_errors=True)
