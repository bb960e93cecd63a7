"""Stage identity: a stage's output folder is named by a hash of everything deciding it.

The hash covers the input plan, the stage's own settings, the previous stage's id and the
versions of the tools that decide results (Python minor version, pylint/astroid for the
filter, vLLM and the model for rewrites). Change any of them and the stage gets a new folder
and runs again; leave them and a re-run finds its committed markers and does nothing.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import sys
from typing import Any

# Distributions whose versions decide the filter's results.
FILTER_TOOLS = ("pylint", "astroid")


def tool_versions(distributions: tuple[str, ...]) -> dict[str, str]:
    versions = {"python": f"{sys.version_info.major}.{sys.version_info.minor}"}
    for name in distributions:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def stage_id(kind: str, plan_id: str, settings: dict[str, Any], previous: str | None,
             tools: dict[str, str]) -> str:
    """A short content hash, e.g. `filter-3f9c0a1b2c4d`."""
    body = {"kind": kind, "plan": plan_id, "settings": settings, "previous": previous, "tools": tools}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()
    return f"{kind}-{digest[:12]}"
