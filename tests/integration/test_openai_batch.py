"""OpenAI Batch JSONL round trip: batch requests in, SwallowMath on the scripted server, batch
responses out, checked field by field (ids, content, usage, finish reason, errors)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from palimpsest.cli import main
from tests.support.openai_server import Reply, ScriptedOpenAIServer

pytestmark = pytest.mark.integration

PROBLEM = "A train covers 120 km in 2 hours. What is its average speed?"
ANSWER = "The average speed is distance over time: 120 km / 2 h = 60 km/h.\nFinal answer: 60 km/h"
LONG = "Sum the integers from 1 to 100."
CUT = "To sum 1..100, pair the terms from both ends: 1 + 100, 2 + 99, and so on, each pair"


def request(custom_id: str, *messages: dict[str, Any]) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "whatever", "messages": list(messages), "max_tokens": 100},
    }


@pytest.fixture()
def server() -> Iterator[ScriptedOpenAIServer]:
    scripted = ScriptedOpenAIServer()
    with scripted.run() as running:
        running.script(PROBLEM, Reply(ANSWER, prompt_tokens=41, completion_tokens=23))
        running.script(
            LONG, Reply(CUT, finish_reason="length", prompt_tokens=30, completion_tokens=64)
        )
        yield running


def test_batch_round_trip(server: ScriptedOpenAIServer, tmp_path: Path) -> None:
    lines = [
        request(
            "req-1",
            {"role": "system", "content": "You are a tutor."},
            {"role": "user", "content": "an earlier question"},
            {"role": "assistant", "content": "an earlier answer"},
            {"role": "user", "content": [{"type": "text", "text": PROBLEM}]},
        ),
        request("req-2", {"role": "user", "content": LONG}),
        request("req-3", {"role": "system", "content": "no user message here"}),
    ]
    batch = tmp_path / "batch.jsonl"
    batch.write_text("".join(json.dumps(line) + "\n" for line in lines) + "{not json\n")
    out = tmp_path / "responses.jsonl"
    argv = ["rewrite", str(batch), str(out), "--recipe", "swallowmath"]
    argv += ["--input-format", "openai-batch", "--output-format", "openai-batch"]
    argv += ["--engine", "openai", "--model", "scripted", "--base-url", server.base_url]
    argv += ["--work-dir", str(tmp_path / "work")]
    assert main(argv) == 0
    assert server.served(PROBLEM) == 1

    responses = [json.loads(line) for line in out.read_text().splitlines()]
    by_id = {r["custom_id"]: r for r in responses}
    assert len(responses) == 4  # every request answered, the unreadable line too
    assert set(by_id) == {"req-1", "req-2", "req-3", None}

    kept = by_id["req-1"]
    assert kept["error"] is None
    assert kept["id"].startswith("batch_req_")
    assert kept["response"]["status_code"] == 200
    assert kept["response"]["request_id"].startswith("req_")
    body = kept["response"]["body"]
    assert body["object"] == "chat.completion"
    assert body["model"] == "scripted"
    assert body["id"].startswith("chatcmpl")
    (choice,) = body["choices"]
    assert choice == {
        "index": 0,
        "message": {"role": "assistant", "content": ANSWER},
        "finish_reason": "stop",
    }
    assert body["usage"] == {"prompt_tokens": 41, "completion_tokens": 23, "total_tokens": 64}

    assert by_id["req-2"]["response"] is None
    assert by_id["req-2"]["error"] == {"code": "truncated", "message": "math: 64 tokens"}
    assert by_id["req-3"]["response"] is None
    assert by_id["req-3"]["error"] == {"code": "missing_text", "message": "math: no field 'text'"}
    assert by_id[None]["response"] is None
    assert by_id[None]["error"]["code"] == "invalid_json"
    assert len({r["id"] for r in responses}) == 4

    served = server.served()
    again = tmp_path / "again.jsonl"
    assert main([*argv[:2], str(again), *argv[3:]]) == 0
    assert server.served() == served  # the work folder's committed stage is reused
    assert again.read_text() == out.read_text()  # ids derive from custom_id: same file
