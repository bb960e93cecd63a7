"""Prompt files: load them, check them, hash them, and turn them into chat messages.

Prompts are data, not code: one YAML file per rewrite stage under `<repo>/prompts/`, with a
`system` and a `user` template and a short `description`. Templates name the fields they take
as `{{name}}` (for example `{{text}}`, `{{language}}`); double braces leave the single braces of
code and LaTeX in a prompt alone. A prompt's identity is the SHA-256 of its file's bytes: it
goes into the stage id and each output record's metadata, so editing a prompt re-runs its stage.

A job can bring its own prompt files: `load_stage_prompt` looks in a directory given by the
caller or by the PALIMPSEST_PROMPTS_DIR environment variable before falling back to the
built-in files; the operator reads them from a ConfigMap. Once loaded, a prompt travels inside
the job document (`Prompt.to_dict`), so workers use exactly the text the stage id was computed
from. Every error names the file it is about.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import yaml

from palimpsest.engines.base import ChatMessage

PROMPTS_DIR_ENV: Final = "PALIMPSEST_PROMPTS_DIR"
"""Environment variable naming a directory of prompt files that replaces the built-in one."""

BUILTIN_PROMPTS_DIR: Final = Path(__file__).resolve().parents[2] / "prompts"
"""`<repo>/prompts`, found from this file (the package is installed editable or run from the
repo). An install without the repo must point PALIMPSEST_PROMPTS_DIR at a copy."""

PROMPT_SUFFIX: Final = ".yaml"

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_REQUIRED_KEYS: Final = ("system", "user")
_OPTIONAL_KEYS: Final = ("description",)


class PromptError(ValueError):
    """A prompt file is missing or malformed, or was rendered without a field it needs."""


@dataclass(frozen=True)
class Prompt:
    """One loaded prompt file.

    `system` may be empty (then no system message is sent). `sha256` is the hex digest of the
    file's bytes, so any edit, even to a comment, changes it.
    """

    name: str
    description: str
    system: str
    user: str
    sha256: str
    path: Path
    text: str
    """The file's whole text, as read (its SHA-256 is `sha256`)."""

    @property
    def fields(self) -> frozenset[str]:
        """The placeholders the templates use."""
        return placeholders(self.system) | placeholders(self.user)

    def to_dict(self) -> dict[str, str]:
        """The prompt as the job document carries it: its file's text, name and origin."""
        return {"name": self.name, "path": str(self.path), "text": self.text}

    @staticmethod
    def from_dict(data: Mapping[str, str], allowed_fields: frozenset[str]) -> Prompt:
        return parse_prompt(
            Path(data["path"]), data["text"].encode("utf-8"), allowed_fields, data["name"]
        )

    def render(self, **fields: str) -> tuple[ChatMessage, ...]:
        """The chat messages for one input: a system turn (if any) and the user turn."""
        missing = self.fields - fields.keys()
        if missing:
            raise PromptError(f"{self.path}: no value given for {_names(missing)}")
        messages = []
        if self.system.strip():
            messages.append(ChatMessage("system", _fill(self.system, fields)))
        messages.append(ChatMessage("user", _fill(self.user, fields)))
        return tuple(messages)


def placeholders(template: str) -> frozenset[str]:
    """The `{{name}}` fields a template uses."""
    return frozenset(_PLACEHOLDER.findall(template))


def load_prompt(path: Path, allowed_fields: frozenset[str] | None = None) -> Prompt:
    """Load and check one prompt file; `allowed_fields`, if given, bounds its placeholders."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PromptError(f"{path}: prompt file not found") from None
    except OSError as exc:
        raise PromptError(f"{path}: cannot read prompt file: {exc}") from exc
    return parse_prompt(path, data, allowed_fields)


def parse_prompt(
    path: Path, data: bytes, allowed_fields: frozenset[str] | None = None, name: str | None = None
) -> Prompt:
    """A prompt from a file's bytes; `path` only names it in errors and metadata."""
    doc = _parse(path, data)
    prompt = Prompt(
        name=name or path.name.removesuffix(PROMPT_SUFFIX),
        description=doc.get("description", ""),
        system=doc["system"],
        user=doc["user"],
        sha256=hashlib.sha256(data).hexdigest(),
        path=path,
        text=data.decode("utf-8"),
    )
    if allowed_fields is not None:
        _check_fields(prompt, allowed_fields)
        if "text" not in placeholders(prompt.user):
            raise PromptError(f"{prompt.path}: the user template must contain {{{{text}}}}")
    return prompt


def load_stage_prompt(
    name: str, allowed_fields: frozenset[str], override_dir: Path | None = None
) -> Prompt:
    """The prompt file `name` (e.g. `code-sgcr`) of a stage that fills `allowed_fields`.

    Looks in `override_dir` if given, else in $PALIMPSEST_PROMPTS_DIR if set, else in the
    built-in directory. A directory that is given must hold the stage's file: there is no
    silent fallback to the built-in prompt.
    """
    directory = prompts_dir(override_dir)
    return load_prompt(directory / f"{name}{PROMPT_SUFFIX}", allowed_fields)


def prompts_dir(override_dir: Path | None = None) -> Path:
    """The directory stage prompts are read from (see `load_stage_prompt`)."""
    if override_dir is not None:
        return Path(override_dir)
    from_env = os.environ.get(PROMPTS_DIR_ENV)
    if from_env:
        return Path(from_env)
    return BUILTIN_PROMPTS_DIR


def _parse(path: Path, data: bytes) -> dict[str, str]:
    try:
        doc = yaml.safe_load(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise PromptError(f"{path}: not UTF-8 text: {exc}") from exc
    except yaml.YAMLError as exc:
        raise PromptError(f"{path}: bad YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise PromptError(f"{path}: expected a mapping with keys {', '.join(_REQUIRED_KEYS)}")
    for key in _REQUIRED_KEYS:
        if key not in doc:
            raise PromptError(f"{path}: missing key {key!r}")
    unknown = set(doc) - set(_REQUIRED_KEYS) - set(_OPTIONAL_KEYS)
    if unknown:
        raise PromptError(f"{path}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    for key, value in doc.items():
        if not isinstance(value, str):
            raise PromptError(f"{path}: {key!r} must be a string, got {type(value).__name__}")
    if not doc["user"].strip():
        raise PromptError(f"{path}: 'user' template is empty")
    return doc


def _check_fields(prompt: Prompt, allowed: frozenset[str]) -> None:
    unknown = prompt.fields - allowed
    if unknown:
        raise PromptError(
            f"{prompt.path}: unknown placeholder(s) {_names(unknown)}; "
            f"this stage fills in {_names(allowed)}"
        )


def _fill(template: str, fields: Mapping[str, str]) -> str:
    # One pass over the template: braces inside the inserted values are never expanded.
    return _PLACEHOLDER.sub(lambda match: fields[match.group(1)], template)


def _names(fields: frozenset[str] | set[str]) -> str:
    return ", ".join("{{" + name + "}}" for name in sorted(fields))
