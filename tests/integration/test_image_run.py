"""The filter image, built locally with podman, runs under the constraints of its pods.

tests/cluster/images_build.sh builds (or loads from its cache) the filter image; the test runs
it the way the operator's pods do: read-only root, uid 10001, every capability dropped, /tmp
on tmpfs, the cache folder on a folder of the pod's uid (like the emptyDir), no network. The
entry point must answer `worker --help`, the cache paths the image sets must be writable and
the root must not be.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
from pathlib import Path

import pytest

from palimpsest import __version__, runtime

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
IMAGE = f"ghcr.io/palimpsest-dev/palimpsest-filter:{__version__}"
BUILD = REPO / "tests" / "cluster" / "images_build.sh"
PODMAN = subprocess.run(
    [str(BUILD), "--print-podman"], capture_output=True, text=True, check=True
).stdout.splitlines()
"""The podman command line of the build script (its own storage, runc, overlay)."""


def ulimits() -> list[str]:
    """Explicit limits no higher than this process's own (podman's defaults may exceed them)."""
    out = []
    for name, which in (("nofile", resource.RLIMIT_NOFILE), ("nproc", resource.RLIMIT_NPROC)):
        soft, _ = resource.getrlimit(which)
        value = 4096 if soft == resource.RLIM_INFINITY else min(soft, 4096)
        out += ["--ulimit", f"{name}={value}:{value}"]
    return out


@pytest.fixture(scope="module")
def filter_image() -> str:
    if shutil.which("podman") is None or shutil.which("debootstrap") is None:
        pytest.skip("podman and debootstrap are needed to build the image")
    subprocess.run([str(BUILD), "filter"], check=True)
    return IMAGE


def run(
    image: str, cache: Path, *args: str, entrypoint: str | None = None
) -> subprocess.CompletedProcess[str]:
    """The image under its pod's constraints; `cache` stands in for the cache emptyDir
    (a folder of the pod's uid: podman's tmpfs options ignore the mode here)."""
    command = [
        *PODMAN,
        "run",
        "--rm",
        "--read-only",
        "--user",
        str(runtime.RUN_AS_UID),
        "--cap-drop=ALL",
        "--security-opt",
        "no-new-privileges",
        "--network",
        "none",
        "--tmpfs",
        f"{runtime.TMP_DIR}:rw,size=64m,mode=1777",
        "--volume",
        f"{cache}:{runtime.CACHE_DIR}:rw",
        *ulimits(),
    ]
    if entrypoint:
        command += ["--entrypoint", entrypoint]
    return subprocess.run([*command, image, *args], capture_output=True, text=True, timeout=300)


def test_image_declares_the_runtime_user(filter_image: str) -> None:
    inspect = subprocess.run(
        [*PODMAN, "image", "inspect", filter_image], capture_output=True, text=True, check=True
    )
    config = json.loads(inspect.stdout)[0]["Config"]
    assert config["User"] == str(runtime.RUN_AS_UID)
    assert config["Entrypoint"] == ["palimpsest"]


def cache_dir(tmp_path: Path) -> Path:
    cache = tmp_path / "cache"
    cache.mkdir()
    os.chown(cache, runtime.RUN_AS_UID, runtime.RUN_AS_UID)
    return cache


def test_worker_entry_point_runs_read_only_as_the_runtime_user(
    filter_image: str, tmp_path: Path
) -> None:
    done = run(filter_image, cache_dir(tmp_path), "worker", "--help")
    assert done.returncode == 0, done.stderr
    assert "--job URI" in done.stdout and "--stages" in done.stdout


def test_cache_paths_are_writable_and_the_root_is_not(filter_image: str, tmp_path: Path) -> None:
    script = (
        "import os, pathlib\n"
        f"assert os.getuid() == {runtime.RUN_AS_UID}\n"
        "for name in ('HF_HOME', 'XDG_CACHE_HOME', 'PALIMPSEST_MODEL_CACHE', 'HOME'):\n"
        "    path = pathlib.Path(os.environ[name]); path.mkdir(parents=True, exist_ok=True)\n"
        "    (path / 'probe').write_text('x')\n"
        "try:\n"
        "    pathlib.Path('/opt/venv/probe').write_text('x')\n"
        "except OSError:\n"
        "    print('root read-only')\n"
    )
    done = run(filter_image, cache_dir(tmp_path), "-c", script, entrypoint="python")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "root read-only"
