"""The usual mistakes on the command line end as one line naming the thing and the fix.

Each case runs `palimpsest` in a subprocess, as a person would, and checks the exit code of
its kind (see `palimpsest.usererrors`), the line, and that no traceback is printed. The S3
cases use the moto server: a bucket that does not exist, keys it refuses, and an endpoint
where nothing listens.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from palimpsest.usererrors import (
    EXIT_ACCESS_DENIED,
    EXIT_CONFIG_ERROR,
    EXIT_MODEL,
    EXIT_NOT_FOUND,
    EXIT_UNREACHABLE,
)
from tests.support import s3server
from tests.support.jobs import write_job_file
from tests.support.s3server import S3Server, free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RECORD = b'{"id": 1, "text": "print(1)\\n"}\n'


def palimpsest(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "palimpsest.cli", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def check_error(result: subprocess.CompletedProcess[str], code: int, *parts: str) -> str:
    """The run failed with `code` and one `error:` line holding every part; no traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    for part in parts:
        assert part in errors[0], errors[0]
    assert result.returncode == code, result.stderr
    return errors[0]


def math_spec(input_uri: str, model: str = "Qwen/Qwen2.5-0.5B-Instruct") -> dict[str, Any]:
    return {
        "recipe": "swallowmath",
        "input": {"uri": input_uri},
        "output": {"uri": "out"},
        "rewrite": {"engine": {"type": "vllm", "model": model}},
    }


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    """A folder with data/in.jsonl and job.yaml naming it by a relative path."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "in.jsonl").write_bytes(RECORD)
    write_job_file(tmp_path / "job.yaml", math_spec("data/in.jsonl"))
    return tmp_path


def test_run_from_another_directory_names_the_path_and_the_fix(project: Path) -> None:
    elsewhere = project / "elsewhere"
    elsewhere.mkdir()
    result = palimpsest("run", str(project / "job.yaml"), cwd=elsewhere)
    check_error(
        result,
        EXIT_NOT_FOUND,
        "spec.input.uri: data/in.jsonl not found",
        str(elsewhere / "data" / "in.jsonl"),
        "relative paths in a job file are taken from the current directory",
    )


def test_missing_write_job_file(project: Path) -> None:
    result = palimpsest("run", "jbo.yaml", cwd=project)
    check_error(result, EXIT_NOT_FOUND, "jbo.yaml: cannot read the job file", "check the path")


def test_yaml_typo_names_line_and_column(project: Path) -> None:
    text = (project / "job.yaml").read_text().replace("  input:", "   input:")
    (project / "typo.yaml").write_text(text)
    line = 1 + text.splitlines().index("   input:")
    result = palimpsest("run", "typo.yaml", cwd=project)
    check_error(result, EXIT_CONFIG_ERROR, f"typo.yaml: YAML error at line {line}, column", "fix")


def test_unknown_spec_field_suggests_the_known_one(project: Path) -> None:
    spec = math_spec("data/in.jsonl")
    spec["sharding"] = {"recordPerShard": 4}
    write_job_file(project / "unknown.yaml", spec)
    result = palimpsest("run", "unknown.yaml", cwd=project)
    check_error(
        result,
        EXIT_CONFIG_ERROR,
        "spec.sharding.recordPerShard: unknown field (did you mean recordsPerShard?",
    )


@pytest.mark.parametrize("command", ["run", "plan", "filter"])
def test_unsupported_uri_scheme(project: Path, command: str) -> None:
    uri = "gs://bucket/in.jsonl"
    args = {
        "run": ["run", str(write_job_file(project / "gs.yaml", math_spec(uri)))],
        "plan": ["plan", uri],
        "filter": ["filter", uri, "kept.jsonl"],
    }[command]
    result = palimpsest(*args, cwd=project)
    check_error(result, EXIT_CONFIG_ERROR, "unsupported URI scheme gs://", "s3://")


@pytest.mark.parametrize("command", ["plan", "gc"])
def test_missing_local_input(project: Path, command: str) -> None:
    result = palimpsest(command, "data/nothere.jsonl", cwd=project)
    check_error(result, EXIT_NOT_FOUND, "data/nothere.jsonl", "check the path")


def test_truncated_gzip_input_names_the_object(project: Path) -> None:
    whole = gzip.compress(RECORD * 2000)
    (project / "data" / "cut.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    spec = {**math_spec("data/cut.jsonl.gz"), "recipe": "swallowcode", "stages": ["filter"]}
    write_job_file(project / "cut.yaml", spec)
    result = palimpsest("run", "cut.yaml", cwd=project)
    check_error(result, EXIT_CONFIG_ERROR, "cut.jsonl.gz: damaged gzip stream")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_input(project: Path) -> None:
    (project / "data" / "in.jsonl").chmod(0)
    result = palimpsest("filter", "data/in.jsonl", "kept.jsonl", cwd=project)
    check_error(result, EXIT_ACCESS_DENIED, "in.jsonl", "make it readable")


@pytest.mark.parametrize("command", ["run", "rewrite"])
def test_model_folder_without_config_json(project: Path, command: str) -> None:
    (project / "model").mkdir()
    (project / "model" / "tokenizer.json").write_text("{}")
    if command == "run":
        args = [
            "run",
            str(write_job_file(project / "m.yaml", math_spec("data/in.jsonl", "./model"))),
        ]
    else:
        args = ["rewrite", "data/in.jsonl", "o.jsonl", "--recipe", "swallowmath"]
        args += ["--model", "./model"]
    result = palimpsest(*args, cwd=project)
    check_error(result, EXIT_MODEL, "model ./model: no config.json in this folder", "--model")


# --- S3 ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def strict_s3() -> Iterator[S3Server]:
    """A moto server that refuses every key pair, as S3 refuses keys it does not know."""
    server, proc = s3server.start(check_credentials=True)
    try:
        yield server
    finally:
        s3server.stop(proc)


def s3_env(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": s3server.ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": s3server.SECRET_KEY,
        "AWS_DEFAULT_REGION": s3server.REGION,
        "AWS_ENDPOINT_URL_S3": endpoint,
    }


def test_s3_access_denied(strict_s3: S3Server, tmp_path: Path) -> None:
    result = palimpsest("plan", "s3://corpus/in.jsonl", cwd=tmp_path, env=strict_s3.env())
    check_error(
        result,
        EXIT_ACCESS_DENIED,
        "cannot list s3://corpus/in.jsonl",
        "InvalidAccessKeyId",
        "check the credentials",
    )


def test_s3_bucket_that_does_not_exist(s3_server: S3Server, project: Path) -> None:
    spec = {**math_spec("s3://no-such-bucket/in.jsonl"), "storage": {}}
    write_job_file(project / "s3.yaml", spec)
    result = palimpsest("run", "s3.yaml", cwd=project, env=s3_server.env())
    check_error(result, EXIT_NOT_FOUND, "s3://no-such-bucket/in.jsonl", "check the bucket name")


@pytest.mark.slow
def test_s3_wrong_endpoint(tmp_path: Path) -> None:
    """Nothing listens there: the retries give up (about 20 s) and the line names the fix."""
    endpoint = f"http://127.0.0.1:{free_port()}"
    result = palimpsest("plan", "s3://corpus/in.jsonl", cwd=tmp_path, env=s3_env(endpoint))
    check_error(
        result, EXIT_UNREACHABLE, "cannot list s3://corpus/in.jsonl", endpoint, "--s3-endpoint"
    )
