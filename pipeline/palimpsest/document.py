"""The job document: the normalized job, its plan and its prompts, as workers read them.

The operator (and `palimpsest run`, and the `filter`/`rewrite` commands) writes one JSON
document per distinct job next to the plan, content-addressed (`<output>/_jobs/job-<hash>.json`,
created once, never changed). A worker pod gets `--job URI` and its index, nothing that
repeats the spec: it reads the document, recomputes the stage ids from it with the same
function the operator used, and refuses to run (exit 3) when they differ from the ids the
document records, which catches an image whose version differs from the operator's.

The prompts travel inside the document, text and all: a worker uses exactly the prompt its
stage id was computed from, even if the ConfigMap it came from is edited while pods run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Union, get_args, get_origin, get_type_hints

from palimpsest.identity import StageRef, stage_refs
from palimpsest.job import Job
from palimpsest.names import JOBS_DIR
from palimpsest.prompts import Prompt, load_stage_prompt
from palimpsest.stages.registry import STAGES
from palimpsest.storage import StorageError, Store, join

DOCUMENT_KIND: Final = "RewriteJobDocument"
DOCUMENT_VERSION: Final = 1


class DocumentError(ValueError):
    """A job document that cannot be used as it is; the message names it and says why."""


@dataclass(frozen=True)
class JobDocument:
    """A job with its plan (id and where it is stored) and the prompts of its stages."""

    job: Job
    plan_id: str
    plan_uri: str
    prompts: Mapping[str, Prompt]

    def stage_refs(self) -> tuple[StageRef, ...]:
        return stage_refs(self.job, self.plan_id, self.prompts)

    def ref(self, kind: str) -> StageRef:
        for ref in self.stage_refs():
            if ref.kind == kind:
                return ref
        raise DocumentError(f"stage {kind!r} is not one of the job's {list(self.job.stages)}")

    def to_json(self) -> bytes:
        body = {
            "kind": DOCUMENT_KIND,
            "version": DOCUMENT_VERSION,
            "job": _encode(self.job),
            "plan": {"id": self.plan_id, "uri": self.plan_uri},
            "prompts": {name: p.to_dict() for name, p in sorted(self.prompts.items())},
            "stageIds": {ref.kind: ref.stage_id for ref in self.stage_refs()},
        }
        return json.dumps(body, indent=1, sort_keys=True).encode("utf-8")

    def uri(self) -> str:
        digest = hashlib.sha256(self.to_json()).hexdigest()[:16]
        return join(self.job.output_uri, JOBS_DIR, f"job-{digest}.json")

    @staticmethod
    def from_json(data: bytes, source: str) -> JobDocument:
        """Decode and check a document; `source` names it in errors."""
        try:
            body = json.loads(data)
            if body.get("kind") != DOCUMENT_KIND or body.get("version") != DOCUMENT_VERSION:
                raise DocumentError(
                    f"{source}: not a {DOCUMENT_KIND} version {DOCUMENT_VERSION} "
                    f"(kind {body.get('kind')!r}, version {body.get('version')!r})"
                )
            job = _decode(Job, body["job"], "job")
            prompts = {
                name: Prompt.from_dict(p, STAGES[name].prompt_fields)
                for name, p in body["prompts"].items()
            }
            document = JobDocument(job, body["plan"]["id"], body["plan"]["uri"], prompts)
        except DocumentError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise DocumentError(f"{source}: {type(exc).__name__}: {exc}") from exc
        computed = {ref.kind: ref.stage_id for ref in document.stage_refs()}
        if computed != body.get("stageIds"):
            raise DocumentError(
                f"{source}: this program computes stage ids {computed}, the document says "
                f"{body.get('stageIds')}: the worker's version (or its pinned tools) differs "
                "from the one that wrote the job"
            )
        return document


def job_prompts(job: Job, override_dir: Path | None = None) -> dict[str, Prompt]:
    """The prompt of each of the job's stages that has one, by stage name (see
    `prompts.load_stage_prompt` for where files are looked up)."""
    prompts: dict[str, Prompt] = {}
    for name in job.stages:
        entry = STAGES[name]
        if entry.prompt is not None:
            prompts[name] = load_stage_prompt(entry.prompt, entry.prompt_fields, override_dir)
    return prompts


def write_document(store: Store, document: JobDocument) -> str:
    """Store the document under its content address (once) and return its URI."""
    uri = document.uri()
    store.put_bytes(uri, document.to_json(), if_absent=True)
    return uri


def read_document(store: Store, uri: str) -> JobDocument:
    try:
        data = store.read_bytes(uri)
    except (StorageError, OSError) as exc:
        raise DocumentError(f"{uri}: cannot read the job document: {exc}") from exc
    return JobDocument.from_json(data, uri)


# --- a small codec between the frozen dataclasses and JSON ---------------------------------


def _encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_encode(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _encode(v) for k, v in value.items()}
    return value


def _decode(kind: Any, value: Any, where: str) -> Any:
    """`value` (parsed JSON) as an instance of the type annotation `kind`."""
    origin = get_origin(kind)
    if kind is Any:
        return value
    if origin in (Union, types.UnionType):
        options = [a for a in get_args(kind) if a is not type(None)]
        if value is None and len(options) < len(get_args(kind)):
            return None
        return _decode(options[0], value, where)
    if dataclasses.is_dataclass(kind) and isinstance(kind, type):
        return _decode_dataclass(kind, value, where)
    if origin is tuple:
        if not isinstance(value, list):
            raise TypeError(f"{where}: expected a list, got {type(value).__name__}")
        return tuple(_decode(get_args(kind)[0], v, f"{where}[]") for v in value)
    if origin is not None and issubclass(origin, Mapping):
        if not isinstance(value, dict):
            raise TypeError(f"{where}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"{where}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def _decode_dataclass(kind: type[Any], value: Any, where: str) -> Any:
    if not isinstance(value, dict):
        raise TypeError(f"{where}: expected a mapping, got {type(value).__name__}")
    hints = get_type_hints(kind)
    names = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(value) - names)
    if unknown:
        raise TypeError(f"{where}.{unknown[0]}: unknown field")
    return kind(**{k: _decode(hints[k], v, f"{where}.{k}") for k, v in value.items()})
