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
