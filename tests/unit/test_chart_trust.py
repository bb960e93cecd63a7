"""The rendered chart: Secrets readable only where RewriteJobs are watched, and only when the
trust settings let RewriteJobs name Secrets at all; the settings reach the operator."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "palimpsest"
HELMS = sorted(Path.home().glob(".cache/palimpsest/helm-*/bin/helm"))

pytestmark = pytest.mark.skipif(not HELMS, reason="helm is built by tests/cluster/build.sh")


def render(*values: str) -> list[dict[str, Any]]:
    args = [str(HELMS[-1]), "template", "rel", str(CHART), "--namespace", "ops"]
    for value in values:
        args += ["--set", value]
    out = subprocess.run(args, check=True, capture_output=True, text=True, timeout=60).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def secret_grants(docs: list[dict[str, Any]]) -> dict[tuple[str, str | None], str]:
    """Role or ClusterRole granting `get secrets` -> how it is bound (kind of the binding)."""
    granting = {
        (d["kind"], d["metadata"]["name"], d["metadata"].get("namespace"))
        for d in docs
        if d["kind"] in ("Role", "ClusterRole")
        for rule in d["rules"]
        if "secrets" in rule["resources"]
    }
    out = {}
    for d in docs:
        if d["kind"] in ("RoleBinding", "ClusterRoleBinding"):
            ref = d["roleRef"]
            namespace = d["metadata"].get("namespace")
            role_ns = namespace if ref["kind"] == "Role" else None
            if (ref["kind"], ref["name"], role_ns) in granting:
                out[(d["kind"], namespace)] = ref["kind"]
    return out


def operator_env(docs: list[dict[str, Any]]) -> dict[str, str]:
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value") for e in container["env"]}


@pytest.mark.parametrize(
    ("values", "grants"),
    [
        ((), {("ClusterRoleBinding", None): "ClusterRole"}),
        (
            ("watchNamespaces={team-a,team-b}",),
            {("RoleBinding", "team-a"): "Role", ("RoleBinding", "team-b"): "Role"},
        ),
        (("watchNamespaces={team-a}", "trust.secretRefs=never"), {}),
        (("trust.secretRefs=never",), {}),
        (("trust.secretRefs=labelled",), {("ClusterRoleBinding", None): "ClusterRole"}),
    ],
)
def test_secrets_are_readable_only_where_and_when_allowed(
    values: tuple[str, ...], grants: dict[tuple[str, str | None], str]
) -> None:
    assert secret_grants(render(*values)) == grants


def test_trust_settings_reach_the_operator() -> None:
    env = operator_env(
        render("trust.allowedImagePrefixes={ghcr.io/a/,registry.local/}", "trust.secretRefs=never")
    )
    assert env["PALIMPSEST_ALLOWED_IMAGE_PREFIXES"] == "ghcr.io/a/,registry.local/"
    assert env["PALIMPSEST_SECRET_REFS"] == "never"
    defaults = operator_env(render())
    assert (defaults["PALIMPSEST_ALLOWED_IMAGE_PREFIXES"], defaults["PALIMPSEST_SECRET_REFS"]) == (
        "",
        "any",
    )


def test_an_unknown_secret_policy_is_refused_by_the_chart() -> None:
    with pytest.raises(subprocess.CalledProcessError):
        render("trust.secretRefs=sometimes")
