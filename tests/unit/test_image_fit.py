"""The images fit the pods the operator builds: user, writable paths, entry point, version tag.

Each Dockerfile's final stage is parsed (ARG defaults, ENV, USER, ENTRYPOINT, CMD) and
compared with `palimpsest.runtime` and with the Job `stage_job` builds for the image's pool:
the pod runs as the image's user, the root filesystem is read-only, every path the image
points a tool's cache at lies under a volume the pod mounts, and the pod's command is the
image's entry point. The release workflow, kustomize and the chart pull the same tag the
job defaults name.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from palimpsest import __version__, runtime
from palimpsest.identity import StageRef
from palimpsest.job import parse_job
from palimpsest.stages.registry import Pool
from palimpsest_operator.jobs import Owner, StageJob, stage_job
from palimpsest_operator.placement import DEFAULT_IMAGES, parse_placement

REPO = Path(__file__).resolve().parents[2]
FILTER = StageRef("filter", "filter-0123456789ab", None)
SGCR = StageRef("sgcr", "sgcr-0123456789ab", FILTER.stage_id)
SPEC: dict[str, Any] = {
    "apiVersion": "palimpsest.dev/v1alpha1",
    "kind": "RewriteJob",
    "metadata": {"name": "demo", "namespace": "team"},
    "spec": {
        "recipe": "swallowcode",
        "input": {"uri": "s3://bucket/in"},
        "output": {"uri": "s3://bucket/out"},
        "rewrite": {"engine": {"type": "vllm", "model": "org/model"}},
    },
}
POD_IMAGES = {"filter": (FILTER,), "rewrite": (SGCR,)}


@dataclass
class FinalStage:
    """What the last stage of a Dockerfile declares, ARG and ENV references expanded."""

    args: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    run: list[str] = field(default_factory=list)

    def expand(self, text: str) -> str:
        values = {**self.args, **self.env}
        return re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m.group(1), m.group(0)), text)


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) pairs of a Dockerfile, continuation lines joined, comments out."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        whole = pending + line
        pending = ""
        word, _, rest = whole.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def final_stage(image: str) -> FinalStage:
    steps = instructions((REPO / "images" / image / "Dockerfile").read_text())
    last = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    stage = FinalStage()
    for word, rest in steps[last + 1 :]:
        if word == "ARG":
            name, _, default = rest.partition("=")
            stage.args[name] = default
        elif word == "ENV":
            for pair in shlex.split(rest):
                name, _, value = pair.partition("=")
                stage.env[name] = stage.expand(value)
        elif word == "USER":
            stage.user = stage.expand(rest)
        elif word == "ENTRYPOINT":
            stage.entrypoint = json.loads(rest)
        elif word == "CMD":
            stage.cmd = json.loads(rest)
        elif word == "RUN":
            stage.run.append(stage.expand(rest))
    return stage


def pod_for(image: str) -> tuple[dict[str, Any], dict[str, Any]]:
    body = copy.deepcopy(SPEC)
    work = StageJob(
        parse_job(body),
        parse_placement(body),
        Owner("demo", "team", "u"),
        "s3://b/j.json",
        POD_IMAGES[image],
        4,
    )
    pod = stage_job(work)["spec"]["template"]["spec"]
    return pod, pod["containers"][0]


def under(path: str, mounts: list[dict[str, Any]]) -> bool:
    return any(
        path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")
        for m in mounts
        if not m.get("readOnly")
    )


@pytest.mark.parametrize("image", ["operator", "filter", "rewrite"])
def test_image_user_is_the_runtime_uid(image: str) -> None:
    stage = final_stage(image)
    assert stage.args.get("RUN_AS_UID") == str(runtime.RUN_AS_UID)
    assert stage.user == str(runtime.RUN_AS_UID)
    setup = " ".join(stage.run)
    assert f'--uid "{runtime.RUN_AS_UID}"' in setup and f'--gid "{runtime.RUN_AS_UID}"' in setup
    assert stage.env["HOME"] == runtime.TMP_DIR


@pytest.mark.parametrize("image", sorted(POD_IMAGES))
def test_worker_image_env_is_the_runtime_env(image: str) -> None:
    env = final_stage(image).env
    assert {k: env.get(k) for k in runtime.CACHE_ENV} == dict(runtime.CACHE_ENV)
    if image == "rewrite":
        assert env["PALIMPSEST_PROMPTS_DIR"] == runtime.PROMPTS_DIR


@pytest.mark.parametrize("image", sorted(POD_IMAGES))
def test_worker_image_fits_the_pod_the_operator_builds(image: str) -> None:
    stage = final_stage(image)
    pod, container = pod_for(image)
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True
    assert str(security["runAsUser"]) == stage.user
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = container["volumeMounts"]
    writable = {k: v for k, v in stage.env.items() if v.startswith("/") and k != "PATH"}
    writable.pop("PALIMPSEST_PROMPTS_DIR", None)
    assert writable, "the image names no writable path"
    for name, path in writable.items():
        assert under(path, mounts), f"{image}: {name}={path} is on the read-only root"
    pod_env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    for name in runtime.CACHE_ENV:
        assert under(pod_env[name], mounts), f"{image}: pod {name}={pod_env[name]} not mounted"
    assert container["command"] == stage.entrypoint
    assert container["args"][0] == stage.cmd[0] == "worker"
    assert container["image"] == DEFAULT_IMAGES[Pool.CPU if image == "filter" else Pool.GPU]


def test_every_pull_uses_the_package_version_without_a_v() -> None:
    for image in DEFAULT_IMAGES.values():
        assert image.endswith(f":{__version__}")
    kustomize = yaml.safe_load((REPO / "manifests" / "kustomization.yaml").read_text())
    assert {i["newTag"] for i in kustomize["images"]} == {__version__}
    chart = yaml.safe_load((REPO / "charts" / "palimpsest" / "Chart.yaml").read_text())
    assert chart["appVersion"] == __version__
    workflow = (REPO / ".github" / "workflows" / "release.yml").read_text()
    assert "${{ github.ref_name }}" not in workflow
    assert 'version="${GITHUB_REF_NAME#v}"' in workflow
    assert ":${{ steps.version.outputs.version }}" in workflow
