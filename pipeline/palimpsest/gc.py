"""What an output folder holds that nothing will ever read: parts of committed shards that
their marker does not list, and the chunk checkpoints of committed shards.

Attempts never delete what a marker or checkpoint may list (see `commit`), so losing, killed
and zombie attempts leave parts behind. Only committed shards are looked at: an uncommitted
shard's parts may belong to an attempt still running or be adopted by the next one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from palimpsest.commit import MARKERS, OUTPUT_KIND, REJECTS_KIND, Marker
from palimpsest.names import PROBE_DIR
from palimpsest.rewrite.checkpoint import CHECKPOINTS
from palimpsest.storage import ObjectInfo, Store

_SHARD = re.compile(r"^shard-(\d+)(?:\.json)?$")


@dataclass
class Garbage:
    """Unreferenced objects of one output folder, by stage folder."""

    objects: dict[str, list[ObjectInfo]] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.objects.values())

    @property
    def bytes(self) -> int:
        return sum(o.size for v in self.objects.values() for o in v)


def find_garbage(store: Store, output_uri: str) -> Garbage:
    """Every object under `output_uri` that no marker lists and no reader will need."""
    root = output_uri.rstrip("/") + "/"
    by_stage: dict[str, list[tuple[list[str], ObjectInfo]]] = {}
    for info in store.list(root):
        stage, *rest = info.uri[len(root) :].split("/")
        by_stage.setdefault(stage, []).append((rest, info))
    garbage = Garbage()
    for stage, objects in sorted(by_stage.items()):
        if stage == PROBE_DIR:
            garbage.objects[stage] = [info for _, info in objects]
        elif not stage.startswith("_"):
            found = _stage_garbage(store, objects)
            if found:
                garbage.objects[stage] = found
    return garbage


def _stage_garbage(store: Store, objects: list[tuple[list[str], ObjectInfo]]) -> list[ObjectInfo]:
    listed: set[str] = set()
    committed: set[int] = set()
    for rest, info in objects:
        shard = _shard(rest, MARKERS)
        if shard is not None:
            committed.add(shard)
            marker = Marker.from_json(store.read_bytes(info.uri))
            listed.update(p.uri for parts in marker.parts.values() for p in parts)
    found = []
    for rest, info in objects:
        for folder in (OUTPUT_KIND, REJECTS_KIND, CHECKPOINTS):
            shard = _shard(rest, folder)
            if shard in committed and info.uri not in listed:
                found.append(info)
    return found


def _shard(rest: list[str], folder: str) -> int | None:
    """The shard number of `<folder>/shard-N[.json]/...`, else None."""
    if len(rest) < 2 or rest[0] != folder:
        return None
    match = _SHARD.match(rest[1])
    return int(match.group(1)) if match else None


def delete_all(store: Store, objects: Iterable[ObjectInfo]) -> None:
    for info in objects:
        store.delete(info.uri)
