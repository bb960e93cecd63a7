"""Chunk checkpoints inside a shard, so a killed rewrite pod resumes without regenerating.

A rewrite shard takes GPU-hours; losing a pod (preemption, a spot node) must not redo finished
records. Every so often the runner closes its current parts (`ShardOutput.roll`) and writes a
small immutable checkpoint object next to the stage's markers:

    <stage_uri>/_checkpoints/shard-NNNNNN/<attempt>-<seq>.json

It lists the parts just closed, the record keys in each part (in write order) and the stats of
those records. Checkpoint objects are never changed or overwritten (conditional puts); a new
attempt reads all of a shard's checkpoints and takes them in name order, skipping any that
shares a record key with one already taken (two attempts that ran at once), so every key
counts once. The taken parts join the new attempt's own parts in the shard's marker; records
whose keys they hold are not generated again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from palimpsest.commit import OUTPUT_KIND, Part
from palimpsest.records import Record, read_jsonl
from palimpsest.stats import Stats
from palimpsest.storage import ObjectInfo, StorageError, Store, create_object, join

log = logging.getLogger(__name__)

CHECKPOINTS = "_checkpoints"


def checkpoint_prefix(stage_uri: str, shard: int) -> str:
    return join(stage_uri, CHECKPOINTS, f"shard-{shard:06d}")


@dataclass(frozen=True)
class Checkpoint:
    """One chunk of one attempt: its closed parts, the keys they hold, and their stats."""

    stage_id: str
    shard: int
    attempt: str
    seq: int
    parts: dict[str, list[Part]]
    keys: dict[str, list[list[str]]]
    """Per kind, one list of record keys per part (same order as `parts`)."""
    stats: Stats

    def uri(self, stage_uri: str) -> str:
        return join(checkpoint_prefix(stage_uri, self.shard), f"{self.attempt}-{self.seq:06d}.json")

    def all_keys(self) -> Iterator[str]:
        for lists in self.keys.values():
            for keys in lists:
                yield from keys

    def to_json(self) -> bytes:
        body = {
            "stage_id": self.stage_id,
            "shard": self.shard,
            "attempt": self.attempt,
            "seq": self.seq,
            "parts": {k: [p.__dict__ for p in v] for k, v in self.parts.items()},
            "keys": self.keys,
            "stats": self.stats.to_dict(),
        }
        return json.dumps(body, sort_keys=True).encode("utf-8")

    @staticmethod
    def from_json(data: bytes) -> Checkpoint:
        body: dict[str, Any] = json.loads(data)
        return Checkpoint(
            stage_id=str(body["stage_id"]),
            shard=int(body["shard"]),
            attempt=str(body["attempt"]),
            seq=int(body["seq"]),
            parts={k: [Part(**p) for p in v] for k, v in body["parts"].items()},
            keys={k: [[str(x) for x in keys] for keys in v] for k, v in body["keys"].items()},
            stats=Stats.from_dict(body["stats"]),
        )


def write_checkpoint(store: Store, stage_uri: str, checkpoint: Checkpoint) -> None:
    """Create the checkpoint object; it never replaces an existing one (a retried put whose
    first try landed finds its own bytes there, which is success)."""
    uri = checkpoint.uri(stage_uri)
    if create_object(store, uri, checkpoint.to_json()) is not None:
        raise RuntimeError(f"checkpoint {uri} exists already with other content")


def delete_checkpoints(store: Store, stage_uri: str, shard: int, attempt: str) -> None:
    """Remove one attempt's checkpoints (after its parts were deleted)."""
    for info in _listing(store, stage_uri, shard):
        if info.uri.rsplit("/", 1)[-1].startswith(f"{attempt}-"):
            store.delete(info.uri)


@dataclass
class Resumed:
    """What earlier attempts finished of one stage of one shard."""

    parts: dict[str, list[Part]] = field(default_factory=dict)
    done: dict[str, str] = field(default_factory=dict)
    """Record key -> the kind it ended in ('output' or 'rejects')."""
    stats: Stats = field(default_factory=Stats)
    output_parts: list[tuple[Part, list[str]]] = field(default_factory=list)
    """Output parts with their keys, to read back what the next stage still needs."""

    def outputs(self, store: Store, wanted: set[str]) -> dict[str, Record]:
        """The checkpointed output records whose keys are in `wanted`."""
        found: dict[str, Record] = {}
        for part, keys in self.output_parts:
            if not wanted.intersection(keys):
                continue
            for key, raw in zip(keys, read_jsonl(store, part.uri), strict=True):
                if key in wanted and raw.record is not None:
                    found[key] = raw.record
        return found


def load_checkpoints(store: Store, stage_uri: str, shard: int) -> list[Checkpoint]:
    """A shard's checkpoint objects, in name order."""
    infos = sorted(_listing(store, stage_uri, shard), key=lambda i: i.uri)
    return [Checkpoint.from_json(store.read_bytes(i.uri)) for i in infos if i.uri.endswith(".json")]


def resume(checkpoints: list[Checkpoint]) -> Resumed:
    """Merge checkpoints, taking each only if none of its keys was taken before."""
    state = Resumed()
    for checkpoint in checkpoints:
        keys = list(checkpoint.all_keys())
        if any(key in state.done for key in keys) or len(set(keys)) != len(keys):
            log.warning(
                "checkpoint %s-%d overlaps earlier ones; not used",
                checkpoint.attempt,
                checkpoint.seq,
            )
            continue
        for kind, parts in checkpoint.parts.items():
            state.parts.setdefault(kind, []).extend(parts)
            for part, part_keys in zip(parts, checkpoint.keys[kind], strict=True):
                state.done.update(dict.fromkeys(part_keys, kind))
                if kind == OUTPUT_KIND:
                    state.output_parts.append((part, part_keys))
        state.stats.merge(checkpoint.stats)
    return state


def _listing(store: Store, stage_uri: str, shard: int) -> list[ObjectInfo]:
    try:
        return store.list(checkpoint_prefix(stage_uri, shard) + "/")
    except StorageError:  # a local folder that does not exist yet: no checkpoints
        return []
