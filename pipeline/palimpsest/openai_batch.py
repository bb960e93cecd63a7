"""OpenAI Batch JSONL in and out, so files made for `vllm run-batch`, llm-d's batch gateway or
AIBrix run through a recipe unchanged.

In: each line is a batch request (`{"custom_id", "method", "url", "body": {"messages": [...]}}`);
it becomes a record whose id is `custom_id` and whose text is the content of the last user
message. A line that is not a request still becomes a record (without text, or as the raw line),
so the stage rejects it with a reason and it comes back as an `error` line: nothing is dropped.

Out: each record becomes a batch response line, as the Batch API writes them:
`{"id", "custom_id", "response": {"status_code": 200, "request_id", "body": {chat.completion
with "choices" and "usage"}}, "error": null}` for a kept record (usage summed over the stages
that served it), and `{"id", "custom_id", "response": null, "error": {"code": <reject reason>,
"message": <detail>}}` for a reject, sorted by custom_id. Ids are derived from `custom_id`,
so a re-run writes the same file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final

from palimpsest.recordfields import DETAIL_FIELD, META_FIELD, REASON_FIELD, STAGE_FIELD
from palimpsest.records import Record, encode_record, read_all_jsonl
from palimpsest.storage import Store, iter_lines_with_offsets

ID_FIELD: Final = "custom_id"
"""Records made from batch requests keep the request's custom_id under its own name."""
TEXT_FIELD: Final = "text"


def request_to_line(line: bytes) -> bytes:
    """A batch request line as a record line: custom_id and the last user message's text.
    Lines that are not JSON pass through (the reader rejects them as invalid_json)."""
    try:
        request = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return line
    if not isinstance(request, dict):
        return line
    record: Record = {ID_FIELD: request.get(ID_FIELD)}
    text = last_user_text(request.get("body"))
    if text is not None:
        record[TEXT_FIELD] = text
    return encode_record(record)


def last_user_text(body: Any) -> str | None:
    """The content of the last user message of a chat request body (text parts joined)."""
    messages = body.get("messages") if isinstance(body, Mapping) else None
    if not isinstance(messages, list):
        return None
    for message in reversed(messages):
        if isinstance(message, Mapping) and message.get("role") == "user":
            return _content_text(message.get("content"))
    return None


def _content_text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        parts = [p.get("text") for p in content if isinstance(p, Mapping)]
        return "".join(p for p in parts if isinstance(p, str))
    return None


def requests_to_records(lines: Iterable[bytes]) -> Iterator[bytes]:
    for line in lines:
        if line.strip():
            yield request_to_line(line.rstrip(b"\r\n")).rstrip(b"\n") + b"\n"


def _batch_id(custom_id: Any, prefix: str) -> str:
    return f"{prefix}_{hashlib.sha256(json.dumps(custom_id).encode()).hexdigest()[:24]}"


def usage(record: Record) -> dict[str, int]:
    """Tokens of every stage that served the record, summed, in the API's names."""
    meta = record.get(META_FIELD)
    prompt = completion = 0
    for stage in (meta or {}).values() if isinstance(meta, dict) else ():
        if isinstance(stage, dict):
            prompt += int(stage.get("prompt_tokens") or 0)
            completion += int(stage.get("generated_tokens") or 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _finish_reason(record: Record) -> str:
    meta = record.get(META_FIELD)
    stages = [s for s in meta.values() if isinstance(s, dict)] if isinstance(meta, dict) else []
    reasons = stages[-1].get("finish_reasons") if stages else None
    return str(reasons[0]) if isinstance(reasons, list) and reasons else "stop"


def response_line(record: Record, model: str) -> Record:
    """The batch response line of a kept record."""
    custom_id = record.get(ID_FIELD)
    body = {
        "id": _batch_id(custom_id, "chatcmpl"),
        "object": "chat.completion",
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": record.get(TEXT_FIELD)},
                "finish_reason": _finish_reason(record),
            }
        ],
        "usage": usage(record),
    }
    return {
        "id": _batch_id(custom_id, "batch_req"),
        ID_FIELD: custom_id,
        "response": {
            "status_code": 200,
            "request_id": _batch_id(custom_id, "req"),
            "body": body,
        },
        "error": None,
    }


UNREADABLE: Final = frozenset({"invalid_json", "invalid_utf8"})
"""Reject reasons of lines that were not requests at all: their custom_id is unknown (null)."""


def error_line(record: Record) -> Record:
    """The batch response line of a reject: its reason as the error code."""
    reason = str(record.get(REASON_FIELD, "rejected"))
    custom_id = record.get(ID_FIELD)
    line_id = custom_id
    if reason in UNREADABLE:
        # Its id is the reader's "@<file>:<byte offset>"; the file is a temporary copy.
        line_id, custom_id = f"unreadable:{str(custom_id).rsplit(':', 1)[-1]}", None
    detail = record.get(DETAIL_FIELD)
    stage = record.get(STAGE_FIELD)
    message = str(detail) if detail else reason
    if stage:
        message = f"{stage}: {message}"
    return {
        "id": _batch_id(line_id, "batch_req"),
        ID_FIELD: custom_id,
        "response": None,
        "error": {"code": reason, "message": message},
    }


# --- files ----------------------------------------------------------------------------------


def convert_requests(source: Store, requests_uri: str, target: Store, records_uri: str) -> None:
    """Write the records of a batch request file (local or s3://) to `records_uri`, unless
    it holds them already (a re-run in the same work folder then keeps its plan)."""
    with contextlib.closing(source.open_range(requests_uri)) as stream:
        lines = (line for _, line in iter_lines_with_offsets(stream, 0))
        records = b"".join(requests_to_records(lines))
    if not (target.exists(records_uri) and target.read_bytes(records_uri) == records):
        target.put_bytes(records_uri, records)


def write_responses(
    store: Store, kept_uri: str, rejects_uri: str, target: Store, out_uri: str, model: str
) -> int:
    """The batch response file of a rewrite's kept records and rejects, in custom_id order;
    returns the number of lines."""
    lines = [response_line(r, model) for r in read_all_jsonl(store.read_bytes(kept_uri))]
    lines += [error_line(r) for r in read_all_jsonl(store.read_bytes(rejects_uri))]
    lines.sort(key=lambda line: json.dumps(line[ID_FIELD]))
    target.put_bytes(out_uri, b"".join(encode_record(line) for line in lines))
    return len(lines)
