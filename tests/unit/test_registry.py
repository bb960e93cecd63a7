"""The stage registry is the one home of each stage: recipes, prompts, the CLI and the CRD
follow it, and a test fails when one of them drifts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from palimpsest.cli import build_parser
from palimpsest.commands.rewrite import LLM_STAGES
from palimpsest.identity import TOOL_PINS
from palimpsest.prompts import BUILTIN_PROMPTS_DIR, load_stage_prompt
from palimpsest.stages.registry import RECIPES, STAGES, Runner, groups, recipe_stages

REPO = Path(__file__).resolve().parents[2]
CRDS = (
    REPO / "manifests" / "crd" / "rewritejobs.palimpsest.dev.yaml",
    REPO / "charts" / "palimpsest" / "crds" / "rewritejobs.palimpsest.dev.yaml",
)


def spec_schema(path: Path) -> dict[str, Any]:
    crd = yaml.safe_load(path.read_text())
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return dict(schema["properties"]["spec"])


def quoted(names: tuple[str, ...] | list[str]) -> str:
    return ", ".join(f"'{n}'" for n in names)


def expected_rules() -> list[dict[str, str]]:
    """The CRD's cross-field rules that the registry decides, as the CRD must spell them."""
    rules = [
        {
            "rule": f"!has(self.stages) || self.recipe != '{r.name}' || "
            f"self.stages.all(s, s in [{quoted(r.stages)}])",
            "message": f"stages of recipe {r.name} are {', '.join(r.stages)}",
        }
        for r in RECIPES.values()
    ]
    cpu_only = [n for n, e in STAGES.items() if e.runner is not Runner.LLM]
    rules.append(
        {
            "rule": f"has(self.stages) && self.stages.all(s, s in [{quoted(cpu_only)}]) || "
            "has(self.rewrite) && has(self.rewrite.engine)",
            "message": "rewrite.engine is required when an LLM stage runs",
        }
    )
    for name, entry in STAGES.items():
        for setting in entry.prompt_values.values():
            section, key = setting.path.removeprefix("spec.").split(".")
            rules.append(
                {
                    "rule": f"!has(self.stages) || !('{name}' in self.stages) || "
                    f"has(self.{section}) && has(self.{section}.{key})",
                    "message": f"{section}.{key} is required by stage {name}",
                }
            )
    return rules


def test_crd_enums_and_rules_follow_the_registry() -> None:
    for path in CRDS:
        spec = spec_schema(path)
        assert spec["properties"]["recipe"]["enum"] == list(RECIPES), path
        assert spec["properties"]["stages"]["items"]["enum"] == list(STAGES), path
        assert spec["properties"]["stages"]["maxItems"] == max(
            len(r.stages) for r in RECIPES.values()
        )
        rules = spec["x-kubernetes-validations"]
        for rule in expected_rules():
            assert rule in rules, f"{path}: missing or different: {rule}"


def test_every_recipe_names_known_stages_and_a_valid_default() -> None:
    for recipe in RECIPES.values():
        assert set(recipe.stages) <= set(STAGES)
        assert recipe_stages(recipe.name, None, "spec.stages") == recipe.default
        assert recipe_stages(recipe.name, list(recipe.default), "spec.stages") == recipe.default


def test_every_llm_stage_has_a_loadable_prompt_file_and_a_judge() -> None:
    for name, entry in STAGES.items():
        assert set(entry.tools) <= set(TOOL_PINS), name
        if entry.runner is Runner.RECORDS:
            assert entry.open is not None and entry.decides is not None, name
            continue
        if entry.runner is Runner.CORPUS:
            assert entry.decides is not None and entry.prompt is None, name
            continue
        assert (entry.judge is None) != (entry.judge_samples is None), name
        assert entry.prompt is not None
        prompt = load_stage_prompt(entry.prompt, entry.prompt_fields)
        assert prompt.fields == entry.prompt_fields, name


def test_prompt_files_are_exactly_the_registry_s() -> None:
    files = sorted(p.name for p in BUILTIN_PROMPTS_DIR.glob("*.yaml"))
    assert files == sorted(e.prompt_file() for e in STAGES.values() if e.prompt)


def test_the_cli_offers_the_registry_s_choices() -> None:
    parser = build_parser()
    for recipe in RECIPES:
        args = parser.parse_args(["rewrite", "in", "out", "--recipe", recipe, "--model", "m"])
        assert args.recipe == recipe
    with pytest.raises(SystemExit):
        parser.parse_args(["rewrite", "in", "out", "--recipe", "poetry", "--model", "m"])
    assert tuple(n for n, e in STAGES.items() if e.runner is Runner.LLM) == LLM_STAGES


def test_groups_put_consecutive_llm_stages_in_one_pod() -> None:
    assert list(groups(("filter", "sgcr", "scor"))) == [("filter",), ("sgcr", "scor")]
    assert list(groups(("translate", "response"))) == [("translate", "response")]
    assert list(groups(("filter",))) == [("filter",)]
