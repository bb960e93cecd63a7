"""The CRD's shape, and that it declares everything the operator writes (or pruning drops it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from palimpsest.commit import OUTPUT_FORMATS
from palimpsest.engines.settings import SPECULATIVE_METHODS, SpeculativeSettings
from palimpsest.job import SPECULATIVE_KEYS, Job
from palimpsest_operator import constants as c
from palimpsest_operator.manifest import ManifestProgress
from tests.unit.test_operator_reconcile import Harness

CRD_PATH = (
    Path(__file__).resolve().parents[2] / "manifests" / "crd" / "rewritejobs.palimpsest.dev.yaml"
)


def crd() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(CRD_PATH.read_text())
    return data


def schema() -> dict[str, Any]:
    version = crd()["spec"]["versions"][0]
    result: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return result


def rules(node: dict[str, Any]) -> list[str]:
    return [r["rule"] for r in node.get("x-kubernetes-validations", [])]


def test_names_version_and_subresources() -> None:
    body = crd()
    assert body["metadata"]["name"] == f"{c.PLURAL}.{c.GROUP}"
    names = body["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == (c.KIND, c.PLURAL, ["rwj"])
    (version,) = body["spec"]["versions"]
    assert version["name"] == c.VERSION and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    columns = [col["name"] for col in version["additionalPrinterColumns"]]
    assert columns == ["Phase", "Progress", "Kept", "Generated", "Age"]


def test_phases_follow_the_code() -> None:
    assert schema()["properties"]["status"]["properties"]["phase"]["enum"] == list(c.PHASES)


def test_immutable_fields_and_cross_field_rules() -> None:
    spec = schema()["properties"]["spec"]
    for field in ("input", "output", "storage"):
        assert "self == oldSelf" in rules(spec["properties"][field]), field
    assert "self.output.uri != self.input.uri" in rules(spec)


def test_every_schema_node_is_described_or_obvious() -> None:
    spec = schema()["properties"]["spec"]

    def walk(node: dict[str, Any], path: str) -> list[str]:
        missing = []
        for name, child in (node.get("properties") or {}).items():
            if child.get("type") == "object" and "description" not in child:
                missing.append(f"{path}.{name}")
            missing += walk(child, f"{path}.{name}")
        return missing

    assert walk(spec, "spec") == []


def test_status_declares_everything_the_operator_writes(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    harness.tick()
    status = schema()["properties"]["status"]
    declared = set(status["properties"])
    assert set(harness.status) <= declared
    for key in ("kopf", "checkpoint", "baseline"):
        assert status["properties"][key]["x-kubernetes-preserve-unknown-fields"] is True
    stage_fields = set(status["properties"]["stages"]["items"]["properties"])
    for stage in harness.status["stages"]:
        assert set(stage) <= stage_fields


def pruned(value: Any, node: dict[str, Any], path: str) -> list[str]:
    """The paths of `value` that the API server would prune under the schema `node`."""
    if node.get("x-kubernetes-preserve-unknown-fields"):
        return []
    if isinstance(value, dict) and "properties" in node:
        fields = node["properties"]
        return [f"{path}.{k}" for k in value if k not in fields] + [
            p for k, v in value.items() if k in fields for p in pruned(v, fields[k], f"{path}.{k}")
        ]
    if isinstance(value, list) and "items" in node:
        return [p for i, v in enumerate(value) for p in pruned(v, node["items"], f"{path}[{i}]")]
    return []


def test_pruning_keeps_every_field_the_operator_writes(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    harness.tick()
    status = schema()["properties"]["status"]
    assert pruned(harness.status, status, "status") == []
    progress = ManifestProgress("scor-0123456789ab", 1500, 10, 100, cuts=(1500,))
    manifest = status["properties"]["manifest"]
    assert pruned(progress.to_status(), manifest, "status.manifest") == []


def test_every_key_is_a_string() -> None:
    """YAML 1.1 reads bare keys like `n` or `on` as booleans; the API server would too."""

    def walk(node: Any, path: str) -> list[str]:
        bad: list[str] = []
        if isinstance(node, dict):
            for key, value in node.items():
                if not isinstance(key, str):
                    bad.append(f"{path}.{key!r}")
                bad += walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for item in node:
                bad += walk(item, path)
        return bad

    assert walk(crd(), "") == []


def test_speculative_decoding_schema_follows_the_parser() -> None:
    engine = schema()["properties"]["spec"]["properties"]["rewrite"]["properties"]["engine"]
    speculative = engine["properties"]["speculative"]
    assert set(speculative["properties"]) == set(SPECULATIVE_KEYS)
    assert speculative["properties"]["method"]["enum"] == list(SPECULATIVE_METHODS)
    defaults = SpeculativeSettings()
    for key, field in SPECULATIVE_KEYS.items():
        assert speculative["properties"][key]["default"] == getattr(defaults, field), key
    assert "self.type == 'vllm' || !has(self.speculative)" in rules(engine)


def test_status_declares_what_a_finished_job_gets(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    harness.finish_filter()
    assert harness.status["phase"] == c.SUCCEEDED
    properties = schema()["properties"]["status"]["properties"]
    assert set(harness.status) <= set(properties)
    assert set(harness.status["card"]) <= set(properties["card"]["properties"])


def test_output_format_schema_follows_the_parser() -> None:
    output = schema()["properties"]["spec"]["properties"]["output"]["properties"]
    assert output["format"]["enum"] == list(OUTPUT_FORMATS)
    assert output["format"]["default"] == Job.__dataclass_fields__["output_format"].default
