"""Take back what a sample's attribute assignments add to the stdlib trees a worker keeps.

When astroid builds a module, each `x.name = value` in it is recorded on whatever `x` infers to:
in that module's or class's `locals`, or a class's or function's `instance_attrs`. When `x` is a
stdlib module or class, that is a tree the worker keeps for later samples, so after a sample
writing `os.custom = 1` a later sample reading `os.custom` was no longer told `os` has no such
member, and scored higher than in a fresh pylint. The journal notes every such entry made by a
module the worker forgets after the sample (the sample's own, and the non-stdlib modules it
imported) and removes them when the sample is done.

It records what astroid's `delayed_assattr` infers by wrapping the assignment target's `infer`
for the duration of the call, so nothing is inferred twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

_Entry = tuple[dict[str, list[Any]], str, Any]


def _namespaces(target: Any) -> Iterator[dict[str, list[Any]]]:
    """The attribute maps `delayed_assattr` may have added to for one inferred target."""
    for owner in (target, getattr(target, "_proxied", None)):
        for name in ("locals", "instance_attrs"):
            namespace = getattr(owner, name, None)
            if isinstance(namespace, dict):
                yield namespace


class AttributeJournal:
    """The attribute entries that modules forgotten after a sample added to any tree."""

    def __init__(self, forgotten: Callable[[str], bool]) -> None:
        self._forgotten = forgotten
        self._entries: list[_Entry] = []

    def wrap(self, delayed_assattr: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
        def journaled(builder: Any, node: Any) -> None:
            if not self._forgotten(node.root().name):
                delayed_assattr(builder, node)
                return
            targets: list[Any] = []
            expr = node.expr
            infer = expr.infer

            def recording(*args: Any, **kwargs: Any) -> Iterator[Any]:
                for target in infer(*args, **kwargs):
                    targets.append(target)
                    yield target

            expr.infer = recording
            try:
                delayed_assattr(builder, node)
            finally:
                del expr.infer
            self._note(node, targets)

        return journaled

    def _note(self, node: Any, targets: list[Any]) -> None:
        for target in targets:
            for namespace in _namespaces(target):
                if any(value is node for value in namespace.get(node.attrname, ())):
                    self._entries.append((namespace, node.attrname, node))

    def undo(self) -> int:
        """Remove every noted entry; returns how many there were."""
        count = len(self._entries)
        for namespace, name, node in reversed(self._entries):
            values = namespace.get(name)
            if values is None:
                continue
            values[:] = [value for value in values if value is not node]
            if not values:
                del namespace[name]
        self._entries.clear()
        return count


def journal_assigned_attributes(forgotten: Callable[[str], bool]) -> AttributeJournal:
    """Install the journal in astroid for this process (once; later calls return the first)."""
    from astroid.builder import AstroidBuilder

    current = AstroidBuilder.delayed_assattr
    journal = getattr(current, "journal", None)
    if isinstance(journal, AttributeJournal):
        return journal
    journal = AttributeJournal(forgotten)
    wrapped = journal.wrap(current)
    wrapped.journal = journal  # type: ignore[attr-defined]
    AstroidBuilder.delayed_assattr = wrapped
    return journal
