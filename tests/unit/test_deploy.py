"""What users install: the CRD copies, the chart, the kustomize manifests, RBAC and examples.

Copies must not drift from their single sources, the operator's RBAC must be exactly the
verbs its code uses plus what Kopf needs, and every example must be a valid RewriteJob.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from palimpsest.job import parse_job

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "palimpsest"
CRD = REPO / "manifests" / "crd" / "rewritejobs.palimpsest.dev.yaml"
EXAMPLES = sorted((REPO / "manifests" / "examples").glob("*.yaml"))

# API calls of the Kubernetes client -> (API group, resource, verb).
CLIENT_VERBS = {
    "read": "get",
    "list": "list",
    "create": "create",
    "delete": "delete",
    "patch": "patch",
}
CLIENT_GROUPS = {"core": "", "batch": "batch"}

# What Kopf itself does with the operator's identity (not visible as client calls in our code):
# it watches and patches RewriteJobs (finalizer, progress annotations), writes status through
# the status subresource, and posts Events.
KOPF_NEEDS = {
    ("palimpsest.dev", "rewritejobs", verb) for verb in ("get", "list", "watch", "patch")
} | {
    ("palimpsest.dev", "rewritejobs/status", "get"),
    ("palimpsest.dev", "rewritejobs/status", "patch"),
    ("", "events", "create"),
    ("events.k8s.io", "events", "create"),
}


def rules_to_set(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def module_constants(tree: ast.Module) -> dict[str, str]:
    return {
        target.id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
        for target in node.targets
        if isinstance(target, ast.Name) and isinstance(node.value.value, str)
    }


def custom_object_permissions(tree: ast.Module) -> set[tuple[str, str, str]]:
    """(group, resource, verb) of `self.custom.<verb>_namespaced_custom_object(group, version,
    namespace, plural)` calls, the group named by a module constant or a literal."""
    constants = module_constants(tree)
    found = set()
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        owner = node.func.value
        if not (isinstance(owner, ast.Attribute) and owner.attr == "custom"):
            continue
        match = re.fullmatch(
            r"(read|list|create|delete|patch)_namespaced_custom_object", node.func.attr
        )
        assert match, f"unmapped custom object call {node.func.attr}"
        group, plural = node.args[0], node.args[3]
        assert isinstance(plural, ast.Constant)
        name = constants[group.id] if isinstance(group, ast.Name) else ast.literal_eval(group)
        found.add((name, str(plural.value), CLIENT_VERBS[match.group(1)]))
    return found


def code_permissions() -> set[tuple[str, str, str]]:
    """(group, resource, verb) for every Kubernetes client call in the operator."""
    found = set()
    for path in (REPO / "operator" / "palimpsest_operator").glob("*.py"):
        tree = ast.parse(path.read_text())
        found |= custom_object_permissions(tree)
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)):
                continue
            if node.value.attr not in CLIENT_GROUPS:
                continue
            match = re.fullmatch(r"(read|list|create|delete|patch)_namespaced_(\w+)", node.attr)
            assert match, f"{path.name}: unmapped client call {node.attr}"
            resource = match.group(2).replace("_", "") + "s"
            found.add((CLIENT_GROUPS[node.value.attr], resource, CLIENT_VERBS[match.group(1)]))
    return found


def yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def documented_role() -> dict[str, Any]:
    text = (REPO / "manifests" / "README.md").read_text()
    return dict(yaml.safe_load(text.split("```yaml\n", 1)[1].split("```", 1)[0]))


def chart_role_rules() -> list[dict[str, Any]]:
    """The rules of every role of the chart (the Secrets rule has roles of its own)."""
    template = (CHART / "templates" / "rbac.yaml").read_text()
    blocks = [b.split("{{-", 1)[0].split("---", 1)[0] for b in template.split("rules:\n")[1:]]
    return [rule for block in blocks for rule in yaml.safe_load(block)]


def test_chart_crd_is_identical_to_the_single_source() -> None:
    # `make chart-sync` refreshes the copy.
    assert (CHART / "crds" / CRD.name).read_bytes() == CRD.read_bytes()
    assert [p.name for p in (CHART / "crds").iterdir()] == [CRD.name]


def test_chart_prompts_are_identical_to_the_project_prompts() -> None:
    ours = {p.name: p.read_bytes() for p in (REPO / "prompts").glob("*.yaml")}
    chart = {p.name: p.read_bytes() for p in (CHART / "prompts").glob("*.yaml")}
    assert chart == ours


def test_rbac_is_exactly_what_the_code_and_kopf_use() -> None:
    needed = code_permissions() | KOPF_NEEDS
    assert ("batch", "jobs", "create") in needed
    assert ("kueue.x-k8s.io", "workloads", "list") in needed
    kustomize = [
        rule
        for d in yaml_docs(REPO / "manifests" / "operator" / "rbac.yaml")
        if d["kind"] == "ClusterRole"
        for rule in d["rules"]
    ]
    for rules in (kustomize, documented_role()["rules"], chart_role_rules()):
        assert rules_to_set(rules) == needed


def test_kustomization_lists_existing_files_and_the_crd() -> None:
    kustomization = yaml.safe_load((REPO / "manifests" / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (REPO / "manifests" / resource).is_file(), resource
    assert "crd/rewritejobs.palimpsest.dev.yaml" in kustomization["resources"]


def test_operator_deployment_is_single_and_recreated() -> None:
    for text in (
        (REPO / "manifests" / "operator" / "deployment.yaml").read_text(),
        (CHART / "templates" / "deployment.yaml").read_text(),
    ):
        assert re.search(r"replicas: 1\n", text)
        assert re.search(r"type: Recreate", text)
        assert "livenessProbe" in text and "/healthz" in text
        assert "command: [palimpsest-operator]" in text


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_valid_rewrite_jobs(path: Path) -> None:
    docs = [d for d in yaml_docs(path) if d.get("kind") == "RewriteJob"]
    if path.name.startswith("argocd"):
        assert docs == []
        return
    assert len(docs) == 1
    job = parse_job(docs[0])
    assert job.output_uri != job.input.uri


def test_every_recipe_has_an_example() -> None:
    recipes = {
        yaml_docs(p)[0]["spec"]["recipe"] for p in EXAMPLES if not p.name.startswith("argocd")
    }
    assert recipes == {"swallowcode", "swallowmath", "instruct"}


def argocd_health(obj: dict[str, Any]) -> dict[str, str]:
    import lupa

    docs = yaml_docs(REPO / "manifests" / "examples" / "argocd-application.yaml")
    script = next(d for d in docs if d["kind"] == "ConfigMap")["data"][
        "resource.customizations.health.palimpsest.dev_RewriteJob"
    ]
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)

    def to_lua(value: Any) -> Any:
        if isinstance(value, dict):
            return lua.table_from({k: to_lua(v) for k, v in value.items()})
        if isinstance(value, list):
            return lua.table_from([to_lua(v) for v in value])
        return value

    result = lua.eval(f"function(obj) {script} end")(to_lua(obj))
    return {"status": result["status"], "message": result["message"]}


@pytest.mark.parametrize(
    ("status", "health"),
    [
        (None, "Progressing"),
        ({"phase": "Filtering", "progress": "3/10"}, "Progressing"),
        ({"phase": "Succeeded"}, "Healthy"),
        ({"phase": "Failed", "message": "2 shards failed"}, "Degraded"),
        (
            {
                "phase": "Rewriting",
                "conditions": [{"type": "Failed", "status": "True", "message": "x"}],
            },
            "Degraded",
        ),
        ({"phase": "Suspended"}, "Suspended"),
    ],
)
def test_argocd_health_check_reads_phase_and_conditions(status: Any, health: str) -> None:
    obj: dict[str, Any] = {"kind": "RewriteJob", "metadata": {"generation": 3}}
    if status is not None:
        obj["status"] = {"observedGeneration": 3, **status}
    assert argocd_health(obj)["status"] == health


def test_argocd_health_is_progressing_until_the_operator_saw_the_edit() -> None:
    """Right after an edit the old Succeeded must not pass for the new spec's health."""
    obj: dict[str, Any] = {
        "kind": "RewriteJob",
        "metadata": {"generation": 4},
        "status": {"phase": "Succeeded", "observedGeneration": 3},
    }
    assert argocd_health(obj)["status"] == "Progressing"
    obj["status"]["observedGeneration"] = 4
    assert argocd_health(obj)["status"] == "Healthy"
