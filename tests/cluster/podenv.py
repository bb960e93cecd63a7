"""Resolve a container's environment and command line the way the kubelet does.

Pods of an Indexed Job learn their index through a fieldRef, workers get S3 credentials
through secretKeyRef, and settings arrive through configMapKeyRef and envFrom; the test
kubelet must resolve all of these from the live API objects, with Kubernetes' `$(VAR)`
expansion rules, so a pod behaves here as it would on a real node.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from kubernetes.client import V1Container, V1EnvVar, V1ObjectFieldSelector, V1Pod
from kubernetes.utils import parse_quantity

POD_IP = "127.0.0.1"


class ConfigError(Exception):
    """A referenced Secret, ConfigMap or key is missing (the kubelet retries these)."""


@dataclass(frozen=True)
class ObjectSource:
    """Reads the Secrets and ConfigMaps env and volumes refer to; None when absent."""

    secret: Callable[[str, str], Mapping[str, str] | None]
    config_map: Callable[[str, str], Mapping[str, str] | None]


def decode_secret_data(data: Mapping[str, str] | None) -> dict[str, str]:
    return {key: base64.b64decode(value).decode() for key, value in (data or {}).items()}


def expand(text: str, variables: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: `$$` escapes, unknown references stay verbatim."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char != "$" or i + 1 >= len(text):
            out.append(char)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(":
            end = text.find(")", i + 2)
            if end == -1:
                out.append(text[i:])
                break
            name = text[i + 2 : end]
            out.append(variables.get(name, f"$({name})"))
            i = end + 1
        else:
            out.append(char)
            i += 1
    return "".join(out)


def _subscript(path: str, prefix: str) -> str | None:
    """The key of `metadata.labels['key']`-style paths."""
    if not path.startswith(prefix + "[") or not path.endswith("]"):
        return None
    return path[len(prefix) + 1 : -1].strip("'\"")


def field_value(pod: V1Pod, path: str) -> str:
    """The value of a downward API fieldRef path."""
    meta, spec = pod.metadata, pod.spec
    simple: dict[str, Any] = {
        "metadata.name": meta.name,
        "metadata.namespace": meta.namespace,
        "metadata.uid": meta.uid,
        "spec.nodeName": spec.node_name,
        "spec.serviceAccountName": spec.service_account_name,
        "status.hostIP": POD_IP,
        "status.hostIPs": POD_IP,
        "status.podIP": POD_IP,
        "status.podIPs": POD_IP,
    }
    if path in simple:
        return str(simple[path] or "")
    for prefix, mapping in (
        ("metadata.labels", meta.labels),
        ("metadata.annotations", meta.annotations),
    ):
        key = _subscript(path, prefix)
        if key is not None:
            return str((mapping or {}).get(key, ""))
    raise ConfigError(f"unsupported fieldRef path {path!r}")


def resource_value(container: V1Container, resource: str, divisor: str | None) -> str:
    """A resourceFieldRef: the container's request or limit, in units of `divisor`."""
    kind, _, name = resource.partition(".")
    resources = container.resources
    values = (resources.limits if kind == "limits" else resources.requests) if resources else None
    raw = (values or {}).get(name)
    if raw is None:
        return "0"
    quantity: Decimal = parse_quantity(raw) / parse_quantity(divisor or "1")
    return str(math.ceil(quantity))


def _from_source(
    kind: str, read: Callable[[str, str], Mapping[str, str] | None], namespace: str, ref: Any
) -> str | None:
    data = read(namespace, ref.name)
    if data is None or ref.key not in data:
        if ref.optional:
            return None
        what = "not found" if data is None else f"has no key {ref.key!r}"
        raise ConfigError(f"{kind} {namespace}/{ref.name} {what}")
    return data[ref.key]


def _env_var_value(
    var: V1EnvVar,
    pod: V1Pod,
    container: V1Container,
    objects: ObjectSource,
    resolved: Mapping[str, str],
) -> str | None:
    if var.value_from is None:
        return expand(var.value or "", resolved)
    source = var.value_from
    namespace = pod.metadata.namespace
    if source.field_ref is not None:
        selector: V1ObjectFieldSelector = source.field_ref
        return field_value(pod, selector.field_path)
    if source.resource_field_ref is not None:
        ref = source.resource_field_ref
        return resource_value(container, ref.resource, ref.divisor)
    if source.secret_key_ref is not None:
        return _from_source("Secret", objects.secret, namespace, source.secret_key_ref)
    if source.config_map_key_ref is not None:
        return _from_source("ConfigMap", objects.config_map, namespace, source.config_map_key_ref)
    raise ConfigError(f"env var {var.name}: unsupported valueFrom")


def _env_from(pod: V1Pod, container: V1Container, objects: ObjectSource) -> dict[str, str]:
    out: dict[str, str] = {}
    namespace = pod.metadata.namespace
    for source in container.env_from or []:
        ref = source.config_map_ref or source.secret_ref
        read = objects.config_map if source.config_map_ref is not None else objects.secret
        data = read(namespace, ref.name)
        if data is None:
            if ref.optional:
                continue
            raise ConfigError(f"envFrom {namespace}/{ref.name} not found")
        out.update({(source.prefix or "") + key: value for key, value in data.items()})
    return out


def container_env(
    pod: V1Pod, container: V1Container, objects: ObjectSource, base: Mapping[str, str]
) -> dict[str, str]:
    """`base` (the image's variables), then envFrom, then env, in the kubelet's order."""
    env = dict(base)
    env.update(_env_from(pod, container, objects))
    for var in container.env or []:
        value = _env_var_value(var, pod, container, objects, env)
        if value is not None:
            env[var.name] = value
    return env


def command_line(container: V1Container, env: Mapping[str, str]) -> list[str]:
    """command + args with $(VAR) references expanded; the image has no entrypoint here."""
    argv = [expand(part, env) for part in (container.command or []) + (container.args or [])]
    if not container.command:
        raise ConfigError(
            f"container {container.name!r} has no command; the test kubelet runs commands "
            "locally and cannot use an image's entrypoint"
        )
    return argv
