"""`palimpsest inspect` and the report on the output of a small local run (SwallowCode on the
scripted server).

The run: 8 records, one with a syntax error, one under the pylint threshold, six rewritten by
SGCR (appends `# r`) and SCOR (appends `# o`). Inspect must show those edits as diffs, the
rejects with their reason, and follow one id through every stage, in plain text when stdout
is not a terminal. The report is opened in headless Chromium (Debian's `chromium`, installed
by `make host-deps`): the rendered DOM must hold the samples, their diffs, the reject examples
and the plots, and a screenshot of it must not be blank.
"""

from __future__ import annotations

import os
import pty
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import matplotlib.image
import numpy
import pytest

from palimpsest.cli import main
from palimpsest.inspection import follow, open_job, samples
from palimpsest.storage import LocalStore
from tests.integration.test_localrun import GOOD, code_job_spec, code_model, write_code_input
from tests.support.jobs import write_job_file
from tests.support.openai_server import ScriptedOpenAIServer

pytestmark = pytest.mark.integration

STORE = LocalStore()


@pytest.fixture(scope="module")
def output(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("inspect")
    write_code_input(folder / "in.jsonl")
    scripted = ScriptedOpenAIServer()
    scripted.default = code_model
    with scripted.run() as server:
        spec = code_job_spec(folder / "in.jsonl", folder / "out", server.base_url)
        job = write_job_file(folder / "job.yaml", spec)
        assert main(["run", str(job), "--workers", "1", "--no-progress"]) == 0
    yield folder / "out"


def inspect(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "palimpsest.cli", "inspect", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_samples_pair_each_record_with_its_input(output: Path) -> None:
    view = open_job(STORE, str(output))
    assert [r.kind for r in view.refs] == ["filter", "sgcr", "scor"]
    found = samples(STORE, view, "scor", limit=GOOD + 5)
    assert len(found) == GOOD
    for sample in found:
        assert sample.before is not None and not sample.rejected
        assert sample.after["text"] == sample.before["text"] + "# o\n"
        assert sample.after["id"] == sample.before["id"]


def test_rejects_by_reason(output: Path) -> None:
    view = open_job(STORE, str(output))
    (low,) = samples(STORE, view, "filter", reason="low_pylint_score", limit=5)
    assert low.rejected and low.after["id"] == "low"
    assert samples(STORE, view, "filter", reason="no_such_reason") == []


def test_plain_output_shows_the_diff_without_colour(output: Path) -> None:
    result = inspect(str(output), "--stage", "sgcr", "-n", "2")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert text.count("== sgcr | shard 0 | key ") == 2
    assert "--- before" in text and "+++ after" in text
    assert "\n+# r" in text  # the line SGCR added, as a diff line
    assert '"generated_tokens": 20' in text and '"score": 6.0' in text
    assert "prompt_sha256" not in text
    assert "\x1b[" not in text


def test_colour_on_a_terminal(output: Path) -> None:
    main_fd, child_fd = pty.openpty()
    with subprocess.Popen(
        [sys.executable, "-m", "palimpsest.cli", "inspect", str(output), "-n", "1"],
        stdout=child_fd,
        stderr=subprocess.PIPE,
        env={**os.environ, "COLUMNS": "200", "TERM": "xterm-256color"},
    ) as proc:
        os.close(child_fd)
        text = read_all(main_fd)
        assert proc.wait(timeout=60) == 0
    assert "\x1b[1;36m== scor | shard 0 | key " in text  # a bold cyan header
    assert "\x1b[32m+# o" in text  # the added line in green
    assert "\x1b[94mdef\x1b[0m" in text  # the code highlighted as Python


def read_all(fd: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the terminal closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks).decode()


def test_follow_one_id_through_every_stage(output: Path) -> None:
    trail = follow(STORE, open_job(STORE, str(output)), "g3")
    assert [s.stage for s in trail] == ["filter", "sgcr", "scor"]
    assert trail[-1].after["text"].endswith("# r\n# o\n")
    result = inspect(str(output), "--id", "g3")
    assert result.returncode == 0, result.stderr
    assert [
        line.split(" | ")[0] for line in result.stdout.splitlines() if line.startswith("==")
    ] == [
        "== filter",
        "== sgcr",
        "== scor",
    ]


def test_follow_stops_at_the_rejecting_stage(output: Path) -> None:
    result = inspect(str(output), "--id", "bad")
    assert result.returncode == 0, result.stderr
    assert "== filter" in result.stdout and "rejected: syntax_error" in result.stdout
    assert "== sgcr" not in result.stdout


def test_unknown_stage_and_id_are_one_line_errors(output: Path, tmp_path: Path) -> None:
    result = inspect(str(output), "--stage", "sgrc")
    assert result.returncode == 3 and "Traceback" not in result.stderr
    assert "--stage sgrc: not a stage of this job (its stages: filter, sgcr, scor)" in result.stderr
    result = inspect(str(output), "--id", "nobody")
    assert result.returncode == 3 and "--id nobody: no record" in result.stderr
    result = inspect(str(tmp_path))
    assert result.returncode == 3 and "no job here" in result.stderr


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("chromium")
    if binary is None:
        pytest.fail("chromium is missing: `make host-deps` installs it")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
    return subprocess.run(
        [binary, *flags, *args], capture_output=True, text=True, timeout=120, check=True
    )


def test_report_renders_in_a_browser(output: Path, tmp_path: Path) -> None:
    page = (output / "report.html").as_uri()
    dom = chromium("--dump-dom", page).stdout
    assert 'id="samples-sgcr"' in dom and 'id="samples-scor"' in dom
    assert dom.count('class="sample"') == 8  # 4 per rewrite stage
    assert dom.count('class="diff"') == 8  # each side by side, as a diff table
    assert "diff_add" in dom  # the lines the stages added are marked
    assert "model score 6.0" in dom and "prompt tokens" in dom
    assert dom.count('class="reject-example"') == 2  # syntax_error and low_pylint_score
    assert "filter: syntax_error" in dom and "def broken(:" in dom
    assert "pylint score at most" in dom
    for alt in ("pylint score histogram", "sgcr length before and after", "scor token lengths"):
        assert f'alt="{alt}"' in dom
    assert "http://" not in dom and "https://" not in dom  # self-contained

    shot = tmp_path / "report.png"
    chromium("--window-size=1200,3000", f"--screenshot={shot}", page)
    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (3000, 1200)
    colours = numpy.unique(pixels.reshape(-1, pixels.shape[-1])[::97], axis=0)
    assert len(colours) > 50  # text, highlighted diff lines and plots, not a blank page
