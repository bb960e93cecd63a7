"""Volumes for pods that run as local processes: each becomes a directory on this machine.

A local process cannot see a volume at its mount path, so every volume is materialised in
the pod's directory (or, for hostPath, is the host path itself) and every occurrence of a
mount path in the container's command, args and env values is rewritten to that directory.
Code that opens a mount path it builds itself at run time will not see the volume.

Supported kinds: emptyDir, configMap, secret, downwardAPI, hostPath and projected (with
serviceAccountToken, configMap, secret and downwardAPI sources). The token source is a
real TokenRequest for the pod's service account, and the pod also gets a kubeconfig for
that token (its path in KUBECONFIG), because no Service IP routes to the API server here.
Anything else (persistentVolumeClaim, csi, ...) fails the pod with a clear message.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes.client import V1Container, V1Pod, V1Volume

from tests.cluster.podenv import ConfigError, ObjectSource, field_value

TOKEN_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"


@dataclass(frozen=True)
class TokenSource:
    """Mints service-account tokens bound to a pod: (pod, audience or None, seconds) -> token."""

    request: Callable[[V1Pod, str | None, int], str]
    api_server: str
    ca_file: Path


class UnsupportedVolume(Exception):
    """A volume kind the test kubelet cannot provide."""


def _write_items(directory: Path, data: Mapping[str, str], items: list[Any] | None) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    selected = {item.key: item.path for item in items} if items else {key: key for key in data}
    for key, relative in selected.items():
        if key not in data:
            raise ConfigError(f"key {key!r} not found for volume item {relative!r}")
        target = directory / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(data[key])


def _object_items(
    kind: str,
    read: Callable[[str, str], Mapping[str, str] | None],
    namespace: str,
    name: str,
    optional: bool | None,
) -> Mapping[str, str]:
    data = read(namespace, name)
    if data is None:
        if optional:
            return {}
        raise ConfigError(f"{kind} {namespace}/{name} not found")
    return data


def _downward_items(pod: V1Pod, items: list[Any] | None) -> dict[str, str]:
    return {
        item.path: field_value(pod, item.field_ref.field_path)
        for item in items or []
        if item.field_ref
    }


class VolumeBuilder:
    """Materialises a pod's volumes under `pod_dir/volumes` and remembers the pod's token."""

    def __init__(
        self, pod: V1Pod, pod_dir: Path, objects: ObjectSource, tokens: TokenSource
    ) -> None:
        self.pod = pod
        self.root = pod_dir / "volumes"
        self.objects = objects
        self.tokens = tokens
        self.api_token: str | None = None

    def build_all(self) -> dict[str, Path]:
        return {volume.name: self.build(volume) for volume in self.pod.spec.volumes or []}

    def build(self, volume: V1Volume) -> Path:
        target = self.root / str(volume.name)
        namespace = self.pod.metadata.namespace
        if volume.host_path is not None:
            path = Path(str(volume.host_path.path))
            if volume.host_path.type in ("DirectoryOrCreate", None, ""):
                path.mkdir(parents=True, exist_ok=True)
            return path
        target.mkdir(parents=True, exist_ok=True)
        if volume.empty_dir is not None:
            return target
        if volume.config_map is not None:
            ref = volume.config_map
            data = _object_items(
                "ConfigMap", self.objects.config_map, namespace, ref.name, ref.optional
            )
            _write_items(target, data, ref.items)
        elif volume.secret is not None:
            ref = volume.secret
            data = _object_items(
                "Secret", self.objects.secret, namespace, ref.secret_name, ref.optional
            )
            _write_items(target, data, ref.items)
        elif volume.downward_api is not None:
            _write_items(target, _downward_items(self.pod, volume.downward_api.items), None)
        elif volume.projected is not None:
            for source in volume.projected.sources or []:
                self._project(target, source)
        else:
            raise UnsupportedVolume(
                f"volume {volume.name!r}: this kind is not supported by the test kubelet"
            )
        return target

    def _project(self, target: Path, source: Any) -> None:
        namespace = self.pod.metadata.namespace
        if source.service_account_token is not None:
            token_source = source.service_account_token
            token = self.tokens.request(
                self.pod, token_source.audience, token_source.expiration_seconds or 3607
            )
            if not token_source.audience:
                self.api_token = token
            _write_items(target, {token_source.path: token}, None)
        elif source.config_map is not None:
            ref = source.config_map
            if ref.name == "kube-root-ca.crt":
                # The cluster CA the root-CA publisher copies into every namespace: ours.
                data: Mapping[str, str] = {"ca.crt": self.tokens.ca_file.read_text()}
            else:
                data = _object_items(
                    "ConfigMap", self.objects.config_map, namespace, ref.name, ref.optional
                )
            _write_items(target, data, ref.items)
        elif source.secret is not None:
            ref = source.secret
            data = _object_items("Secret", self.objects.secret, namespace, ref.name, ref.optional)
            _write_items(target, data, ref.items)
        elif source.downward_api is not None:
            _write_items(target, _downward_items(self.pod, source.downward_api.items), None)

    def write_kubeconfig(self, path: Path) -> Path | None:
        """A kubeconfig for the pod's API token, or None when the pod has no token mounted."""
        if self.api_token is None:
            return None
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "local",
                    "cluster": {
                        "server": self.tokens.api_server,
                        "certificate-authority": str(self.tokens.ca_file),
                    },
                }
            ],
            "users": [{"name": "service-account", "user": {"token": self.api_token}}],
            "contexts": [
                {
                    "name": "in-cluster",
                    "context": {
                        "cluster": "local",
                        "user": "service-account",
                        "namespace": self.pod.metadata.namespace,
                    },
                }
            ],
            "current-context": "in-cluster",
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path


SHM = "/dev/shm"


def container_mounts(container: V1Container, volumes: Mapping[str, Path]) -> list[tuple[str, Path]]:
    """(mount path, local directory) pairs for a container, subPaths resolved."""
    mounts = []
    for mount in container.volume_mounts or []:
        if mount.name not in volumes:
            raise ConfigError(f"volumeMount {mount.name!r} has no volume")
        local = volumes[mount.name]
        if mount.sub_path:
            local = local / mount.sub_path
            if not local.exists():
                local.mkdir(parents=True, exist_ok=True)
        mounts.append((mount.mount_path.rstrip("/") or "/", local))
    return mounts


def rewriter(mounts: list[tuple[str, Path]]) -> Callable[[str], str]:
    """Replaces mount paths (as whole path prefixes) with their local directories, in one pass.
    /dev/shm stays: a process has the host's, which shared memory always uses (Python's
    SharedMemory, vLLM's ring buffer), and a UNIX socket path under a pod's folder would pass
    the 108-byte limit."""
    table = {path: str(local) for path, local in mounts if path not in ("/", SHM)}
    if not table:
        return lambda text: text
    alternatives = "|".join(re.escape(path) for path in sorted(table, key=len, reverse=True))
    pattern = re.compile(r"(?<![\w./-])(" + alternatives + r")(?=$|[/\s\"',:;=)\]])")
    return lambda text: pattern.sub(lambda match: table[match.group(1)], text)
