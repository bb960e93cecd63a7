"""Prompt files: the built-in ones load and ask for what each stage parses; the loader finds
override directories, hashes file bytes, renders messages, and names the file in every error."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from palimpsest.engines import ChatMessage
from palimpsest.prompts import (
    BUILTIN_PROMPTS_DIR,
    PROMPTS_DIR_ENV,
    Prompt,
    PromptError,
    load_prompt,
    load_stage_prompt,
    placeholders,
)
from palimpsest.stages.registry import STAGES

STAGE_FIELDS = {e.prompt: e.prompt_fields for e in STAGES.values() if e.prompt is not None}
"""Each prompt file's name and the fields its stage fills in, from the stage registry."""


def stage_prompt(name: str, override_dir: Path | None = None) -> Prompt:
    return load_stage_prompt(name, STAGE_FIELDS.get(name, frozenset({"text"})), override_dir)


GOOD = """\
description: a test prompt
system: |
  You review code. Keep {braces} and \\frac{a}{b} as they are.
user: |-
  Review this:
  {{text}}
"""


def write(directory: Path, name: str, content: str) -> Path:
    path = directory / name
    path.write_text(content, encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def no_prompts_dir_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PROMPTS_DIR_ENV, raising=False)


@pytest.mark.parametrize("stage", sorted(STAGE_FIELDS))
def test_every_builtin_stage_prompt_loads(stage: str) -> None:
    prompt = stage_prompt(stage)
    assert prompt.name == stage
    assert prompt.path == BUILTIN_PROMPTS_DIR / f"{stage}.yaml"
    assert prompt.fields == STAGE_FIELDS[stage]
    assert prompt.description
    assert prompt.system.strip()
    fields = {name: f"<{name}>" for name in STAGE_FIELDS[stage]}
    system, user = prompt.render(**fields)
    assert system.role == "system"
    assert user.role == "user"
    assert "<text>" in user.content


def test_builtin_directory_holds_exactly_the_stage_prompts() -> None:
    names = sorted(p.stem for p in BUILTIN_PROMPTS_DIR.glob("*.yaml"))
    assert names == sorted(STAGE_FIELDS)


def test_sgcr_asks_for_score_suggestions_and_a_python_fence() -> None:
    system = stage_prompt("code-sgcr").system
    assert "Score:" in system
    assert "Suggestions:" in system
    assert "```python" in system
    assert "1 to 10" in system
    # The ten criteria are numbered 1-10.
    assert all(f"\n{i}. " in system for i in range(1, 11))


def test_scor_asks_for_one_fenced_block_only() -> None:
    system = stage_prompt("code-scor").system
    assert "one ```python fenced block" in system
    assert "no text before or after" in system
    assert "self" in system.lower()


def test_math_asks_for_the_rewritten_text_only() -> None:
    system = stage_prompt("math-rewrite").system
    assert "rewritten document only" in system
    assert "step by step" in system
    assert "Final answer:" in system


def test_translation_names_the_target_language() -> None:
    prompt = stage_prompt("instruct-translate")
    system, user = prompt.render(text="How are you?", language="Japanese")
    assert "into Japanese" in system.content
    assert user.content.endswith("How are you?")


def test_user_turn_is_the_input_unchanged_where_the_template_is_only_text() -> None:
    code = "def f(x):\n    return {'a': x}  # {{not a field}}\n"
    (_, user) = stage_prompt("code-scor").render(text=code)
    assert user.content == code


def test_render_leaves_other_braces_alone(tmp_path: Path) -> None:
    prompt = load_prompt(write(tmp_path, "p.yaml", GOOD))
    system, user = prompt.render(text="x = {1: 2}")
    assert system == ChatMessage(
        "system", "You review code. Keep {braces} and \\frac{a}{b} as they are.\n"
    )
    assert user == ChatMessage("user", "Review this:\nx = {1: 2}")


def test_empty_system_template_sends_only_the_user_turn(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", "system: ''\nuser: '{{text}}'\n")
    assert load_prompt(path).render(text="hi") == (ChatMessage("user", "hi"),)


def test_hash_is_sha256_of_the_file_bytes(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", GOOD)
    first = load_prompt(path)
    assert first.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    write(tmp_path, "p.yaml", GOOD + "# a comment changes the hash too\n")
    assert load_prompt(path).sha256 != first.sha256


def test_placeholders_allow_inner_spaces() -> None:
    assert placeholders("{{ text }} and {{language}} but not {x} or {{ 1x }}") == {
        "text",
        "language",
    }


def test_override_dir_wins(tmp_path: Path) -> None:
    write(tmp_path, "code-sgcr.yaml", GOOD)
    prompt = stage_prompt("code-sgcr", override_dir=tmp_path)
    assert prompt.path == tmp_path / "code-sgcr.yaml"
    assert prompt.description == "a test prompt"


def test_environment_directory_wins_over_builtin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "code-scor.yaml", GOOD)
    monkeypatch.setenv(PROMPTS_DIR_ENV, str(tmp_path))
    assert stage_prompt("code-scor").path == tmp_path / "code-scor.yaml"
    other = tmp_path / "other"
    other.mkdir()
    write(other, "code-scor.yaml", GOOD)
    assert stage_prompt("code-scor", override_dir=other).path == other / "code-scor.yaml"


def test_a_given_directory_without_the_stage_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PromptError, match=str(tmp_path / "math-rewrite.yaml")) as info:
        stage_prompt("math-rewrite", override_dir=tmp_path)
    assert "not found" in str(info.value)


def test_a_prompt_travels_whole_in_a_document() -> None:
    prompt = stage_prompt("code-sgcr")
    again = Prompt.from_dict(prompt.to_dict(), STAGE_FIELDS["code-sgcr"])
    assert again == prompt and again.sha256 == hashlib.sha256(prompt.text.encode()).hexdigest()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("system: [unclosed\nuser: x\n", "bad YAML"),
        ("- a list\n", "expected a mapping"),
        ("user: '{{text}}'\n", "missing key 'system'"),
        ("system: s\n", "missing key 'user'"),
        ("system: s\nuser: '{{text}}'\nmodel: m\n", "unknown key(s) model"),
        ("system: 3\nuser: '{{text}}'\n", "'system' must be a string"),
        ("system: s\nuser: '  '\n", "'user' template is empty"),
    ],
)
def test_malformed_files_are_errors_naming_the_file(
    tmp_path: Path, content: str, problem: str
) -> None:
    path = write(tmp_path, "broken.yaml", content)
    with pytest.raises(PromptError) as info:
        load_prompt(path)
    assert str(path) in str(info.value)
    assert problem in str(info.value)


def test_non_utf8_file_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"system: caf\xe9\nuser: x\n")
    with pytest.raises(PromptError, match="not UTF-8") as info:
        load_prompt(path)
    assert str(path) in str(info.value)


def test_missing_file_is_an_error_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(PromptError, match=f"{tmp_path / 'nope.yaml'}: prompt file not found"):
        load_prompt(tmp_path / "nope.yaml")


def test_unknown_placeholder_for_the_stage_names_the_file(tmp_path: Path) -> None:
    write(tmp_path, "code-sgcr.yaml", "system: 'in {{language}}'\nuser: '{{text}}'\n")
    with pytest.raises(PromptError) as info:
        stage_prompt("code-sgcr", override_dir=tmp_path)
    message = str(info.value)
    assert str(tmp_path / "code-sgcr.yaml") in message
    assert "unknown placeholder(s) {{language}}" in message


def test_stage_user_template_must_take_the_text(tmp_path: Path) -> None:
    write(tmp_path, "code-sgcr.yaml", "system: '{{text}}'\nuser: 'nothing here'\n")
    with pytest.raises(PromptError, match=r"code-sgcr.yaml: the user template must contain"):
        stage_prompt("code-sgcr", override_dir=tmp_path)


def test_rendering_without_a_field_names_the_file(tmp_path: Path) -> None:
    prompt = load_prompt(write(tmp_path, "p.yaml", "system: '{{language}}'\nuser: '{{text}}'\n"))
    with pytest.raises(PromptError, match=r"p.yaml: no value given for \{\{language\}\}"):
        prompt.render(text="x")
