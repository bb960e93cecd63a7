"""The final dataset manifest: the last stage's committed parts, written once at the end.

Readers of a finished job take its output from here (or from the markers), never by listing
part folders, where parts of losing or interrupted attempts may lie.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from palimpsest.commit import OUTPUT_KIND
from palimpsest.identity import StageRef
from palimpsest.names import MANIFESTS_DIR
from palimpsest.storage import join
from palimpsest_operator.progress import read_markers
from palimpsest_operator.storage import JobStorage


def manifest_uri(output_uri: str, last: StageRef) -> str:
    return join(output_uri, MANIFESTS_DIR, f"{last.stage_id}.json")


def write_manifest(
    storage: JobStorage, owner: str, output_uri: str, last: StageRef, shards: int
) -> str:
    """Write the manifest of `last`'s committed parts; returns its URI."""
    parts: list[dict[str, Any]] = []
    stage_uri = last.uri(output_uri)
    for marker in read_markers(storage, stage_uri, list(range(shards))):
        if marker is None:
            continue
        for part in marker.parts.get(OUTPUT_KIND, []):
            parts.append({"shard": marker.shard, **dataclasses.asdict(part)})
    body = {
        "rewriteJob": owner,
        "stage": last.kind,
        "stageId": last.stage_id,
        "records": sum(p["records"] for p in parts),
        "bytes": sum(p["bytes"] for p in parts),
        "parts": parts,
    }
    uri = manifest_uri(output_uri, last)
    storage.store.put_bytes(uri, json.dumps(body, indent=1).encode("utf-8"))
    return uri
