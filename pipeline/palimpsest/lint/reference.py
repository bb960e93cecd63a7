"""The published scoring method, kept as the baseline our fast filter is checked against.

One `pylint` subprocess per sample on a temporary file, the printed rating parsed from its
output, then the comment penalty. Slow by design; used by the parity tests and benchmarks.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

from palimpsest.lint.scoring import PYLINT_ARGS, comment_ratio, penalised

RATED = re.compile(r"rated at (-?[\d.]+)/10")


def published_score(code: str, workdir: Path) -> float | None:
    """Score one sample the published way; None when pylint printed no rating."""
    with tempfile.NamedTemporaryFile("w", suffix=".py", dir=workdir, delete=False) as handle:
        handle.write(code)
        path = Path(handle.name)
    try:
        out = subprocess.run(
            [sys.executable, "-m", "pylint", *PYLINT_ARGS, str(path)],
            capture_output=True,
            text=True,
            cwd=workdir,
            check=False,
        ).stdout
    finally:
        path.unlink()
    match = RATED.search(out)
    if match is None:
        return None
    return penalised(float(match.group(1)), comment_ratio(code))
