"""What a tick reads before it runs anything: the plan, the prompts and the job document.

- The plan is made once per input and sharding (its `plan_key`) and kept on S3 under
  `<output>/_plans/`; status keeps only its id, URI and sizes (etcd objects stay small).
- The prompts come from the ConfigMap `spec.rewrite.prompts.configMapName` names, else from
  the prompt files built into the operator's image; their text decides the stage ids, so a
  ConfigMap edit re-runs the stages whose prompt changed.
- The job document (`palimpsest.document`) carries the job, the plan and the prompts to the
  workers; it is written once per distinct content.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from palimpsest.document import JobDocument, job_prompts, write_document
from palimpsest.job import Job
from palimpsest.names import PLANS_DIR
from palimpsest.plan import make_plan
from palimpsest.prompts import Prompt, parse_prompt
from palimpsest.stages.registry import STAGES
from palimpsest.storage import Store, join
from palimpsest_operator.cluster import Cluster
from palimpsest_operator.placement import Placement

TOKENS_PER_BYTE: Final = 0.25
"""Rough tokens per input byte for the plan's estimate (about four bytes per token)."""


def plan_key(job: Job) -> str:
    """What a plan depends on besides the input listing: the input URI and the sharding
    (which includes how objects are read)."""
    body = {"input": job.input.uri, "sharding": dataclasses.asdict(job.sharding)}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def ensure_plan(job: Job, store: Store, previous: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """The plan as status keeps it: the previous one if the input and sharding are the same
    and its file is still there, else a new plan written to S3 (True). Raises ValueError when
    the input cannot be planned."""
    key = plan_key(job)
    if previous.get("key") == key and store.exists(str(previous.get("uri"))):
        return dict(previous), False
    shard_plan = make_plan(store, job.input.uri, job.sharding)
    uri = join(job.output_uri, PLANS_DIR, f"plan-{shard_plan.plan_id}.json")
    store.put_bytes(uri, shard_plan.to_json())
    input_bytes = sum(s.bytes for s in shard_plan.shards)
    plan = {
        "id": shard_plan.plan_id,
        "uri": uri,
        "shards": len(shard_plan.shards),
        "estRecords": shard_plan.est_records,
        "inputBytes": input_bytes,
        "estTokens": int(input_bytes * TOKENS_PER_BYTE),
        "key": key,
    }
    return plan, True


def load_prompts(
    job: Job, placement: Placement, cluster: Cluster, namespace: str
) -> dict[str, Prompt]:
    """The prompt of each of the job's stages that has one. Raises ValueError (naming the
    ConfigMap and the file) when one is missing or malformed."""
    config_map = placement.gpu.prompts_config_map
    if config_map is None:
        return job_prompts(job)
    data = cluster.read_config_map(namespace, config_map)
    if data is None:
        raise ValueError(f"spec.rewrite.prompts.configMapName: ConfigMap {config_map} not found")
    prompts: dict[str, Prompt] = {}
    missing = []
    for name in job.stages:
        entry = STAGES[name]
        if entry.prompt is None:
            continue
        key = entry.prompt_file()
        if key not in data:
            missing.append(key)
            continue
        origin = Path(f"configmap/{namespace}/{config_map}/{key}")
        prompts[name] = parse_prompt(origin, data[key].encode("utf-8"), entry.prompt_fields)
    if missing:
        raise ValueError(
            f"spec.rewrite.prompts.configMapName: ConfigMap {config_map} has no "
            f"{', '.join(missing)}"
        )
    return prompts


def ensure_document(
    job: Job,
    plan: Mapping[str, Any],
    prompts: Mapping[str, Prompt],
    store: Store,
    written: str | None,
) -> tuple[JobDocument, str]:
    """The job document and its URI; written unless status says this very URI was and it is
    still there (workers exit 3 on a missing document)."""
    document = JobDocument(job, str(plan["id"]), str(plan["uri"]), dict(prompts))
    uri = document.uri()
    if uri != written or not store.exists(uri):
        write_document(store, document)
    return document, uri
