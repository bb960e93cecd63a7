"""Parse an installed module's source once per linter process, however often astroid rebuilds it.

After each sample, astroid forgets every module outside the standard library (see
`linter.forget_non_stdlib_modules`), so a module that many samples import (`test.support` in
CPython's tests, or any package installed next to pylint) is rebuilt for each of them. About
60% of a rebuild is `ast.parse`; the rest turns the parsed tree into astroid's nodes. A parsed
tree depends only on the source text and the module name, so the process keeps the latest parses
of such modules and hands astroid the same tree again: the nodes built from it are the same.

astroid's rebuilder changes one thing in a tree it is given: it strips a docstring by assigning
`body` a new list on the module, class or function node that holds it. The hook gives it a
shallow copy of each such node instead, so a kept tree stays exactly as parsed.
"""

from __future__ import annotations

import ast
import copy
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

# Parsed modules a linter process keeps (least recently used dropped first). CPython's tests
# import about 40 distinct non-stdlib modules; code from the wild imports few installed ones.
PARSES_KEPT = 128

_ParseKey = tuple[str, bool, str]


class ParseMemo:
    """astroid's `_parse_string`, remembering the trees of the modules `keep` names."""

    def __init__(
        self, parse: Callable[..., ast.Module], keep: Callable[[str], bool], size: int = PARSES_KEPT
    ) -> None:
        self._parse = parse
        self._keep = keep
        self._size = size
        self._trees: OrderedDict[_ParseKey, ast.Module] = OrderedDict()
        self.hits = 0

    def __call__(
        self, data: str, type_comments: bool = True, modname: str | None = None
    ) -> ast.Module:
        if not modname or not self._keep(modname):
            return self._parse(data, type_comments=type_comments, modname=modname)
        key = (modname, type_comments, data)
        tree = self._trees.get(key)
        if tree is not None:
            self._trees.move_to_end(key)
            self.hits += 1
            return tree
        tree = self._parse(data, type_comments=type_comments, modname=modname)
        self._trees[key] = tree
        if len(self._trees) > self._size:
            self._trees.popitem(last=False)
        return tree


def _doc_on_a_copy(get_doc: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def wrapped(rebuilder: Any, node: Any) -> Any:
        return get_doc(rebuilder, copy.copy(node))

    return wrapped


def remember_parses(keep: Callable[[str], bool]) -> ParseMemo:
    """Install the memo in astroid for this process (once; later calls return the first)."""
    from astroid import builder, rebuilder

    current = builder._parse_string
    if isinstance(current, ParseMemo):
        return current
    memo = ParseMemo(current, keep)
    rebuilder.TreeRebuilder._get_doc = _doc_on_a_copy(rebuilder.TreeRebuilder._get_doc)
    builder._parse_string = memo
    return memo
