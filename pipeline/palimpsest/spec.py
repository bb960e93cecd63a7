"""Checks of manifest values that name the field they are about.

The job parser (`palimpsest.job`) and the operator's placement parser read the same
RewriteJob; both use these, so a bad value gets the same message whichever reads it:
`spec.filter.minScore: must be a number, got 'high'`.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from typing import Any


def known(data: Mapping[str, Any], where: str, keys: set[str] | frozenset[str]) -> None:
    """Reject a key that no parser reads (usually a typo), naming it and the known ones."""
    unknown = sorted(str(k) for k in data if k not in keys)
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(keys), n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ValueError(
            f"{where}.{unknown[0]}: unknown field ({hint}known: {', '.join(sorted(keys))})"
        )


def mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: must be a mapping")
    return value


def string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: must be a non-empty string")
    return value


def opt_string(value: Any, where: str) -> str | None:
    return None if value is None or value == "" else string(value, where)


def uri(value: Any, where: str) -> str:
    text = string(value, where)
    if not (text.startswith("s3://") or text.startswith("/") or text.startswith("file://")):
        raise ValueError(f"{where}: must be an s3:// URI or a local path, got {text!r}")
    return text.removeprefix("file://")


def choice(value: Any, where: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{where}: must be one of {', '.join(allowed)}, got {value!r}")
    return str(value)


def boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{where}: must be true or false")
    return value


def integer(value: Any, where: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where}: must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{where}: must be >= {minimum}, got {value}")
    return value


def number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{where}: must be a number, got {value!r}")
    return float(value)
