"""pylint's per-run checker setup is built once per linter and still follows its settings."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

from palimpsest.lint.linter import ReusedModuleChecker, SampleLinter

UNUSED_IMPORT = "import os\n\nVALUE = 1\nprint(VALUE)\n"
SAMPLES = [
    UNUSED_IMPORT,
    "def f(a):\n    return a.missing\n",
    "class A:\n    def m(self):\n        return self.x\n\n\nprint(A().m())\n",
    "import sys\n\n\ndef g():\n    return sys.argv\n",
]


def _setup(linter: SampleLinter) -> ReusedModuleChecker:
    setup = linter._linter._astroid_module_checker
    assert isinstance(setup, ReusedModuleChecker)
    return setup


def test_the_setup_is_built_once_and_scores_match_pylints_own(tmp_path: Path) -> None:
    reused = SampleLinter(tmp_path)
    setup = _setup(reused)
    scores = [reused.lint(text) for text in SAMPLES * 2]
    assert setup.setups == 1

    own = SampleLinter(tmp_path)
    pylint_setup = type(own._linter)._astroid_module_checker
    with mock.patch.object(
        own._linter, "_astroid_module_checker", pylint_setup.__get__(own._linter)
    ):
        expected = [own.lint(text) for text in SAMPLES * 2]
    assert scores == expected
    assert {score.rating for score in scores} != {10.0}


def test_a_changed_message_setting_rebuilds_the_setup(tmp_path: Path) -> None:
    linter = SampleLinter(tmp_path)
    before = linter.lint(UNUSED_IMPORT)
    linter._linter.disable("unused-import")
    try:
        after = linter.lint(UNUSED_IMPORT)
    finally:
        linter._linter.enable("unused-import")
    assert _setup(linter).setups == 2
    assert before.rating is not None and after.rating == 10.0 > before.rating


def test_a_samples_own_pragma_changes_only_that_sample(tmp_path: Path) -> None:
    linter = SampleLinter(tmp_path)
    silenced = linter.lint("# pylint: disable=unused-import\n" + UNUSED_IMPORT)
    plain = linter.lint(UNUSED_IMPORT)
    assert silenced.rating == 10.0
    assert plain == SampleLinter(tmp_path).lint(UNUSED_IMPORT)
    assert plain.rating is not None and plain.rating < 10.0
    assert _setup(linter).setups == 1
