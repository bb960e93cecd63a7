"""A sample's score must not depend on which samples its linter process linted before.

Uses a CPython test file that imports `test.test_importlib.util` (outside the stdlib names, so
astroid caches it like any third-party module); without the reset between samples it scored
1.13 alone and 2.08 after `json/__init__.py`.
"""

from __future__ import annotations

import gc
import gzip
import importlib.util
import json
import weakref
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from palimpsest.lint.linter import SampleLinter
from palimpsest.lint.pool import settle_heap

LOADER_TEST = "test.test_importlib.import_.test___loader__"


def _source_of(module: str) -> str:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        pytest.skip(f"{module} is not installed with this Python")
    return Path(spec.origin).read_text(encoding="utf-8")


def _example_texts() -> list[str]:
    data = Path(__file__).resolve().parents[2] / "examples" / "data" / "python-sample.jsonl.gz"
    with gzip.open(data, "rt", encoding="utf-8") as handle:
        return [json.loads(line)["text"] for line in handle]


def test_the_same_sample_scores_the_same_after_different_predecessors() -> None:
    sample = _source_of(LOADER_TEST)
    predecessors = [
        Path(json.__file__).read_text(encoding="utf-8"),
        _source_of("test.test_importlib.util"),
        "import os\n\nprint(os.getcwd())\n",
    ]
    alone = SampleLinter().lint(sample)
    after = []
    for predecessor in predecessors:
        linter = SampleLinter()
        linter.lint(predecessor)
        after.append(linter.lint(sample))
    assert after == [alone] * len(predecessors)
    assert alone.rating == 1.13


@pytest.mark.parametrize(
    ("writer", "reader"),
    [
        ("import os\n\nos.custom_attr = 1\n", "import os\n\nprint(os.custom_attr)\n"),
        (
            "import json\n\nENC = json.JSONEncoder()\nENC.extra_attr = 2\n",
            "import json\n\nENC = json.JSONEncoder()\nprint(ENC.extra_attr)\n",
        ),
    ],
    ids=["module-attribute", "instance-attribute"],
)
def test_an_attribute_a_sample_assigns_on_the_stdlib_is_gone_for_the_next(
    writer: str, reader: str
) -> None:
    # astroid records `os.custom_attr = 1` in the kept `os` tree; a later sample reading it
    # must still get pylint's no-member, as in a fresh run.
    alone = SampleLinter().lint(reader)
    linter = SampleLinter()
    linter.lint(writer)
    assert linter.lint(reader) == alone
    assert alone.rating is not None and alone.rating < 10.0


def test_stdlib_modules_stay_cached_between_samples() -> None:
    from astroid import MANAGER

    linter = SampleLinter()
    linter.lint("import json\n\nprint(json.dumps({}))\n")
    assert "json" in MANAGER.astroid_cache
    assert not any(name.startswith("_palimpsest_sample_") for name in MANAGER.astroid_cache)
    assert not any(name.startswith("test.") for name in MANAGER.astroid_cache)


def test_relative_imports_score_as_in_a_fresh_linter_after_many_samples() -> None:
    # The example data's lib2to3 file (`from . import pytree`) once scored 8.71 instead of a
    # fresh run's 8.42 after the samples before it, when astroid's unnamed entry was dropped.
    texts = _example_texts()[::25]
    marker = '"Utility functions used by the btm_matcher'
    index = next(i for i, text in enumerate(texts) if text.startswith(marker))
    from astroid import MANAGER

    MANAGER.clear_cache()  # as in a fresh process, whatever ran before in this one
    alone = SampleLinter().lint(texts[index])
    warm = SampleLinter()
    for text in texts[:index]:
        warm.lint(text)
    assert warm.lint(texts[index]) == alone


def test_a_full_settle_frees_the_frozen_trees_of_earlier_samples() -> None:
    # A worker freezes what survives each sample; caches still hold the last samples' trees
    # then, so those get frozen too. A full settle must free them once the caches let go, or
    # a worker's memory would grow with every sample it lints.
    from astroid import MANAGER

    trees: list[weakref.ref[Any]] = []
    build = MANAGER.ast_from_file

    def recording(*args: Any, **kwargs: Any) -> Any:
        module = build(*args, **kwargs)
        if module.name.startswith("_palimpsest_sample_") and not trees:
            trees.append(weakref.ref(module))
        return module

    def first_tree_alive() -> bool:  # a bool, so no assertion holds the tree itself
        return trees[0]() is not None

    later = _example_texts()[:40]
    linter = SampleLinter()
    try:
        with mock.patch.object(MANAGER, "ast_from_file", recording):
            linter.lint("VALUE = 1\nprint(VALUE)\n")
        settle_heap()
        assert first_tree_alive()  # frozen while the caches hold it
        for text in later:
            linter.lint(text)
            settle_heap()
        assert first_tree_alive()  # garbage by now, but frozen: only a full settle frees it
        settle_heap(full=True)
        assert not first_tree_alive()
        assert "os" in MANAGER.astroid_cache
    finally:
        gc.unfreeze()


def test_a_rebuilt_module_is_parsed_once_and_keeps_its_docstrings(tmp_path: Path) -> None:
    # Non-stdlib modules are rebuilt for every sample that imports them; their parse is kept,
    # and astroid's docstring stripping must not change the kept tree.
    from astroid import MANAGER, nodes

    from palimpsest.lint.parses import remember_parses

    SampleLinter(tmp_path)  # installs the memo
    memo = remember_parses(lambda name: True)
    source = (
        '"""Module doc."""\n\nclass A:\n    """Class doc."""\n\n'
        '    def f(self):\n        """Function doc."""\n        return 1\n'
    )
    path = tmp_path / "palimpsest_parse_probe.py"
    path.write_text(source)

    def build() -> list[str | None]:
        MANAGER.astroid_cache.pop("palimpsest_parse_probe", None)
        module = MANAGER.ast_from_file(str(path), "palimpsest_parse_probe", source=True)
        defined = [module, *module.nodes_of_class((nodes.ClassDef, nodes.FunctionDef))]
        return [node.doc_node.value if node.doc_node else None for node in defined]

    hits = memo.hits
    first, second = build(), build()
    MANAGER.astroid_cache.pop("palimpsest_parse_probe", None)
    assert memo.hits == hits + 1
    assert first == second == ["Module doc.", "Class doc.", "Function doc."]


def _unmemoized(
    memo: Any, data: str, type_comments: bool = True, modname: str | None = None
) -> Any:
    return memo._parse(data, type_comments=type_comments, modname=modname)


def test_scores_are_the_same_with_and_without_kept_parses() -> None:
    texts = [text for text in _example_texts()[:60] if "from test" in text][:6]
    warm = SampleLinter()
    twice = [warm.lint(text) for text in texts] + [warm.lint(text) for text in texts]
    fresh = []
    with mock.patch("palimpsest.lint.parses.ParseMemo.__call__", _unmemoized):
        for text in texts:
            fresh.append(SampleLinter().lint(text))
    assert twice == fresh * 2
