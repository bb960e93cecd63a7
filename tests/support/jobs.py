"""Jobs for tests, prepared the way the operator and `palimpsest run` prepare them.

`prepared(job)` plans the input, stores the plan and the job document under the job's output
(on S3 or a local folder) and returns the local runner's view of it; `worker_command` is the
command line a worker pod of one stage group runs for that document; `write_job_file` writes a
RewriteJob manifest for `palimpsest run`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from palimpsest.engines.settings import EngineSettings
from palimpsest.job import InputSpec, Job, RewriteSettings, StorageSpec
from palimpsest.localrun import LocalJob, LocalOptions, prepare
from palimpsest.names import API_VERSION, KIND
from palimpsest.plan import PlanSettings
from palimpsest.stages.filter import FilterSettings


def write_job_file(path: Path, spec: dict[str, Any], name: str = "test") -> Path:
    """A RewriteJob manifest with this spec, written to `path`."""
    manifest = {
        "apiVersion": "palimpsest.dev/v1alpha1",
        "kind": "RewriteJob",
        "metadata": {"name": name},
        "spec": spec,
    }
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return path


def make_job(
    input_uri: str,
    output_uri: str,
    stages: Sequence[str] = ("filter",),
    *,
    recipe: str = "swallowcode",
    records_per_shard: int = 10_000,
    endpoint: str | None = None,
    engine: EngineSettings | None = None,
    language: str | None = None,
    **filter_settings: Any,
) -> Job:
    return Job(
        name="test",
        recipe=recipe,
        stages=tuple(stages),
        input=InputSpec(uri=input_uri),
        output_uri=output_uri,
        storage=StorageSpec(endpoint=endpoint),
        sharding=PlanSettings(records_per_shard=records_per_shard),
        filter=FilterSettings(**filter_settings),
        rewrite=None if engine is None else RewriteSettings(engine=engine, language=language),
    )


def manifest(**spec: Any) -> dict[str, Any]:
    """A RewriteJob manifest of the swallowcode recipe from /in to /out; `spec` keys are
    added or replace those."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": "test"},
        "spec": {
            "recipe": "swallowcode",
            "input": {"uri": "/in"},
            "output": {"uri": "/out"},
            **spec,
        },
    }


def prepared(job: Job) -> LocalJob:
    """Plan and document stored under the job's output; what a worker pod needs to start."""
    return prepare(job, LocalOptions())


def worker_command(local: LocalJob, stages: Sequence[str], *extra: str) -> list[str]:
    """`palimpsest worker` for one stage group of the prepared job."""
    return [
        sys.executable,
        "-m",
        "palimpsest.cli",
        "worker",
        "--job",
        local.document.uri(),
        "--stages",
        ",".join(stages),
        *extra,
    ]
