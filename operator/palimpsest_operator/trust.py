"""What a RewriteJob may name: the operator's trust model for its tenants.

Creating a RewriteJob makes the operator create pods: with no limits, anyone allowed to create
one would choose the images those pods run and any Secret of the namespace for them to read,
as powerful as creating pods directly. The operator's settings (Helm values) limit both:
images must start with an allowed prefix, and Secrets may be named never, only when labelled
`palimpsest.dev/usable: "true"`, or freely. A spec that breaks a rule is refused before the
operator reads any Secret or creates anything; the refusal names the field.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from palimpsest_operator.placement import Placement, PodTemplate

USABLE_LABEL: Final = "palimpsest.dev/usable"
"""The label (value "true") a Secret needs when RewriteJobs may name only labelled Secrets."""

SECRETS_NEVER: Final = "never"
SECRETS_LABELLED: Final = "labelled"
SECRETS_ANY: Final = "any"
SECRET_POLICIES: Final = (SECRETS_NEVER, SECRETS_LABELLED, SECRETS_ANY)


@dataclass(frozen=True)
class TrustPolicy:
    image_prefixes: tuple[str, ...] = ()
    """Allowed image prefixes (e.g. "ghcr.io/palimpsest-dev/"); empty allows any image."""
    secrets: str = SECRETS_ANY
    """Whether RewriteJobs may name Secrets: never, labelled (USABLE_LABEL) or any."""

    def __post_init__(self) -> None:
        if self.secrets not in SECRET_POLICIES:
            raise ValueError(
                f"PALIMPSEST_SECRET_REFS: one of {', '.join(SECRET_POLICIES)}, got {self.secrets!r}"
            )


SecretLabels = Callable[[str], Mapping[str, str] | None]
"""The labels of a Secret of the RewriteJob's namespace by name; None when there is none."""


def images(placement: Placement) -> Iterator[tuple[str, str]]:
    """(field, image) of every container the RewriteJob's pods would run."""
    for section, pool in (("spec.filter", placement.cpu), ("spec.rewrite", placement.gpu)):
        yield f"{section}.image", pool.image
        for sidecar in pool.pod_template.sidecars:
            where = f"{section}.podTemplate.spec.containers.{sidecar['name']}.image"
            yield where, str(sidecar.get("image", ""))


def secrets(placement: Placement) -> Iterator[tuple[str, str]]:
    """(field, Secret name) of every Secret the spec has the operator or its pods read."""
    if placement.storage_secret:
        yield "spec.storage.secretRef.name", placement.storage_secret
    engine = "spec.rewrite.engine"
    if placement.gpu.api_key_secret:
        yield f"{engine}.apiKeySecretRef.name", placement.gpu.api_key_secret.name
    if placement.gpu.hub_token_secret:
        yield f"{engine}.hubTokenSecretRef.name", placement.gpu.hub_token_secret.name
    for section, pool in (("spec.filter", placement.cpu), ("spec.rewrite", placement.gpu)):
        yield from _template_secrets(pool.pod_template, f"{section}.podTemplate.spec")


def _template_secrets(template: PodTemplate, where: str) -> Iterator[tuple[str, str]]:
    for volume in template.volumes:
        at = f"{where}.volumes.{volume['name']}"
        if isinstance(volume.get("secret"), Mapping):
            yield f"{at}.secret.secretName", str(volume["secret"].get("secretName", ""))
        projected = volume.get("projected")
        for source in projected.get("sources") or [] if isinstance(projected, Mapping) else []:
            if isinstance(source, Mapping) and isinstance(source.get("secret"), Mapping):
                yield f"{at}.projected.secret.name", str(source["secret"].get("name", ""))
    yield from _env_secrets(template.env, f"{where}.containers.worker")
    for sidecar in template.sidecars:
        at = f"{where}.containers.{sidecar['name']}"
        yield from _env_secrets(sidecar.get("env") or [], at)
        for source in sidecar.get("envFrom") or []:
            if isinstance(source, Mapping) and isinstance(source.get("secretRef"), Mapping):
                yield f"{at}.envFrom.secretRef.name", str(source["secretRef"].get("name", ""))


def _env_secrets(env: Any, where: str) -> Iterator[tuple[str, str]]:
    for item in env if isinstance(env, list | tuple) else []:
        ref = (
            (item.get("valueFrom") or {}).get("secretKeyRef") if isinstance(item, Mapping) else None
        )
        if isinstance(ref, Mapping):
            yield f"{where}.env.{item.get('name')}.secretKeyRef.name", str(ref.get("name", ""))


def denial(placement: Placement, policy: TrustPolicy, labels: SecretLabels) -> str | None:
    """Why the operator refuses this spec (naming the field), or None when it may run."""
    if policy.image_prefixes:
        for where, image in images(placement):
            if not image.startswith(policy.image_prefixes):
                allowed = ", ".join(policy.image_prefixes)
                return f"{where}: image {image!r} is not allowed (allowed prefixes: {allowed})"
    if policy.secrets == SECRETS_ANY:
        return None
    for where, name in secrets(placement):
        if policy.secrets == SECRETS_NEVER:
            return f"{where}: RewriteJobs may not name Secrets on this operator (got {name!r})"
        found = labels(name)
        if found is None or found.get(USABLE_LABEL) != "true":
            # A missing Secret is refused too: a Job created now would read it once it exists.
            return f'{where}: Secret {name!r} is missing or not labelled {USABLE_LABEL}: "true"'
    return None
