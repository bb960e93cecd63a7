"""OpenAI Batch lines to records and back (pure; the round trip is an integration test)."""

from __future__ import annotations

import json

from palimpsest.openai_batch import error_line, request_to_line, response_line, usage


def record_of(line: dict[str, object] | str) -> dict[str, object]:
    raw = line if isinstance(line, str) else json.dumps(line)
    return dict(json.loads(request_to_line(raw.encode())))


def test_the_last_user_message_is_the_text() -> None:
    messages = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "reply"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "sec"}, {"type": "text", "text": "ond"}],
        },
    ]
    line = {"custom_id": 7, "body": {"messages": messages}}
    assert record_of(line) == {"custom_id": 7, "text": "second"}


def test_a_request_without_user_message_has_no_text() -> None:
    assert record_of({"custom_id": "a", "body": {"messages": []}}) == {"custom_id": "a"}
    assert record_of({"custom_id": "b"}) == {"custom_id": "b"}


def test_a_line_that_is_not_json_passes_through() -> None:
    assert request_to_line(b"{nope") == b"{nope"
    assert request_to_line(b"[1, 2]") == b"[1, 2]"


def test_usage_sums_the_stages() -> None:
    record = {
        "custom_id": "x",
        "text": "new",
        "rewrite": {
            "sgcr": {"prompt_tokens": 10, "generated_tokens": 4, "finish_reasons": ["stop"]},
            "scor": {"prompt_tokens": 6, "generated_tokens": 3, "finish_reasons": ["length"]},
        },
    }
    assert usage(record) == {"prompt_tokens": 16, "completion_tokens": 7, "total_tokens": 23}
    body = response_line(record, "m")["response"]["body"]
    assert body["choices"][0]["finish_reason"] == "length"  # the last stage's
    assert body["choices"][0]["message"]["content"] == "new"


def test_error_lines_are_deterministic_and_unreadable_lines_have_no_custom_id() -> None:
    reject = {"custom_id": "c", "reject_reason": "truncated", "reject_stage": "math"}
    assert error_line(reject) == error_line(dict(reject))
    assert error_line(reject)["error"] == {"code": "truncated", "message": "math: truncated"}
    a = error_line({"custom_id": "@/tmp/x/requests.jsonl:10", "reject_reason": "invalid_json"})
    b = error_line({"custom_id": "@/tmp/y/requests.jsonl:10", "reject_reason": "invalid_json"})
    c = error_line({"custom_id": "@/tmp/y/requests.jsonl:99", "reject_reason": "invalid_json"})
    assert a["custom_id"] is None and a == b and a["id"] != c["id"]
