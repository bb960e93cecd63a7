"""The trust model: images from allowed prefixes only, Secrets named as the operator allows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from palimpsest_operator import constants as c
from palimpsest_operator.placement import parse_placement
from palimpsest_operator.trust import USABLE_LABEL, TrustPolicy, denial
from tests.unit.test_operator_jobs import with_changes
from tests.unit.test_operator_reconcile import Harness, conditions_of

SPEC: dict[str, Any] = {
    "spec": {
        "storage": {"secretRef": {"name": "s3"}},
        "filter": {"image": "ghcr.io/palimpsest-dev/palimpsest-filter:1"},
        "rewrite": {
            "image": "ghcr.io/palimpsest-dev/palimpsest-rewrite:1",
            "engine": {"apiKeySecretRef": {"name": "llm", "key": "token"}},
        },
    }
}
OURS = ("ghcr.io/palimpsest-dev/",)
USABLE = {USABLE_LABEL: "true"}
SIDECAR: dict[str, Any] = {"name": "proxy", "image": "docker.io/evil/proxy:1"}
TOKEN_ENV: dict[str, Any] = {
    "name": "TOKEN",
    "valueFrom": {"secretKeyRef": {"name": "ci", "key": "t"}},
}


def with_(**patches: Any) -> dict[str, Any]:
    return with_changes(SPEC, **patches)


def template_only(section: str, **spec: Any) -> dict[str, Any]:
    """No Secret named but through the section's podTemplate."""
    return with_(storage={}, rewrite__engine={}, **{f"{section}__podTemplate": {"spec": spec}})


@pytest.mark.parametrize(
    ("body", "policy", "labels", "refused"),
    [
        (SPEC, TrustPolicy(), {}, None),  # the defaults: any image, any Secret
        (SPEC, TrustPolicy(OURS, "labelled"), {"s3": USABLE, "llm": USABLE}, None),
        (
            with_(filter__image="docker.io/evil/miner:1"),
            TrustPolicy(OURS),
            {},
            "spec.filter.image: image 'docker.io/evil/miner:1' is not allowed",
        ),
        (
            with_(rewrite__podTemplate={"spec": {"containers": [SIDECAR]}}),
            TrustPolicy(OURS),
            {},
            "spec.rewrite.podTemplate.spec.containers.proxy.image: image",
        ),
        (SPEC, TrustPolicy(secrets="never"), {}, "spec.storage.secretRef.name: RewriteJobs may"),
        (
            SPEC,
            TrustPolicy(secrets="labelled"),
            {"s3": USABLE, "llm": {USABLE_LABEL: "false"}},
            "spec.rewrite.engine.apiKeySecretRef.name: Secret 'llm' is missing or not labelled",
        ),
        (
            SPEC,
            TrustPolicy(secrets="labelled"),
            {"llm": USABLE},
            "spec.storage.secretRef.name: Secret 's3' is missing",
        ),
        (
            template_only(
                "filter", volumes=[{"name": "keys", "secret": {"secretName": "admin-keys"}}]
            ),
            TrustPolicy(secrets="labelled"),
            {},
            "spec.filter.podTemplate.spec.volumes.keys.secret.secretName: Secret 'admin-keys'",
        ),
        (
            template_only(
                "rewrite",
                volumes=[{"name": "p", "projected": {"sources": [{"secret": {"name": "deploy"}}]}}],
            ),
            TrustPolicy(secrets="never"),
            {},
            "spec.rewrite.podTemplate.spec.volumes.p.projected.secret.name",
        ),
        (
            template_only("rewrite", containers=[{"name": "worker", "env": [TOKEN_ENV]}]),
            TrustPolicy(secrets="never"),
            {},
            "spec.rewrite.podTemplate.spec.containers.worker.env.TOKEN.secretKeyRef.name",
        ),
        (
            template_only(
                "filter", containers=[{**SIDECAR, "envFrom": [{"secretRef": {"name": "all"}}]}]
            ),
            TrustPolicy(secrets="never"),
            {},
            "spec.filter.podTemplate.spec.containers.proxy.envFrom.secretRef.name",
        ),
        (with_(storage={}, rewrite__engine={}), TrustPolicy(secrets="never"), {}, None),
    ],
)
def test_denial(
    body: dict[str, Any],
    policy: TrustPolicy,
    labels: dict[str, dict[str, str]],
    refused: str | None,
) -> None:
    got = denial(parse_placement(body), policy, labels.get)
    if refused is None:
        assert got is None
    else:
        assert got is not None and got.startswith(refused), got


def test_an_unknown_secret_policy_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="PALIMPSEST_SECRET_REFS: one of never, labelled, any"):
        TrustPolicy(secrets="sometimes")


def test_a_denied_spec_gets_a_condition_and_nothing_is_created(tmp_path: Path) -> None:
    h = Harness(tmp_path, storage={"secretRef": {"name": "s3"}})
    h.cluster.secrets["s3"] = {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}
    h.policy = TrustPolicy(secrets="labelled")
    h.tick()
    assert h.status["phase"] == c.FAILED and not h.cluster.jobs
    condition = conditions_of(h.status)[c.COND_FAILED]
    assert condition["reason"] == c.REASON_DENIED and "Secret 's3'" in condition["message"]
    assert "plan" not in h.status, "nothing was read from S3 with a refused Secret"
    h.cluster.secret_labels["s3"] = dict(USABLE)
    h.tick()
    assert h.status["phase"] == c.FILTERING and len(h.cluster.jobs) == 1
