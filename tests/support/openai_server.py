"""A scripted OpenAI-compatible chat completions server on loopback, for engine and stage tests.

It runs in a thread of the test process (stdlib `http.server`, one thread per connection) and
answers `POST /v1/chat/completions` as each test scripts it: reply text, finish reason, usage,
error statuses for the first N attempts, delays, dropped connections, context-length 400s. It
records what it received and when, and the most requests it ever had in flight, so tests can
assert on retries, backoff and concurrency bounds from the server's side.

Scripting: a test registers replies per *key*, the content of the request's last message
(`server.script("prompt", Reply(status=429), Reply(text="done"))`): attempt k for that key gets
the k-th reply, and the last one repeats. Requests with no script get `server.default(body)`,
an echo of the last message.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CONTEXT_TOO_LONG_MESSAGE = (
    "This model's maximum context length is 2048 tokens. However, your prompt contains "
    "4000 input tokens, which exceeds this limit even without any output tokens. "
    "Please reduce the length of the input prompt."
)


@dataclass(frozen=True)
class Reply:
    """One scripted answer. With `status` != 200 the body is an OpenAI-style error."""

    text: str | list[str] = "ok"
    """The completion text, or one text per choice (the request's n is ignored then)."""
    finish_reason: str = "stop"
    prompt_tokens: int = 11
    completion_tokens: int = 7
    """usage.completion_tokens: the total over all choices."""
    usage: bool = True
    """False leaves `usage` out of the response."""
    status: int = 200
    message: str = "scripted error"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    """Seconds to wait before answering (to trigger client timeouts, or hold concurrency)."""
    drop: bool = False
    """Close the connection without answering."""
    raw_body: str | None = None
    """Send this body instead of a generated one (e.g. malformed JSON)."""

    @classmethod
    def context_too_long(cls) -> Reply:
        return cls(status=400, message=CONTEXT_TOO_LONG_MESSAGE)


@dataclass(frozen=True)
class Received:
    """One request as the server saw it."""

    key: str
    body: dict[str, Any]
    headers: dict[str, str]
    at: float
    """time.monotonic() when it arrived."""


class ScriptedOpenAIServer:
    """The server and its script. Use `run()` to start and stop it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scripts: dict[str, list[Reply]] = {}
        self._attempts: dict[str, int] = defaultdict(int)
        self.received: list[Received] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.default: Callable[[dict[str, Any]], Reply] = echo_reply
        self._httpd: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "server not running"
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def script(self, key: str, *replies: Reply) -> None:
        """Attempt k of requests whose last message is `key` gets replies[k] (last repeats)."""
        with self._lock:
            self._scripts[key] = list(replies)
            self._attempts[key] = 0

    def served(self, key: str | None = None) -> int:
        """Requests received in all, or for one key."""
        with self._lock:
            return sum(1 for r in self.received if key is None or r.key == key)

    def arrivals(self, key: str) -> list[float]:
        with self._lock:
            return [r.at for r in self.received if r.key == key]

    @contextmanager
    def run(self) -> Iterator[ScriptedOpenAIServer]:
        handler = type("Handler", (_Handler,), {"scripted": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        thread.start()
        try:
            yield self
        finally:
            self._httpd.shutdown()
            self._httpd.server_close()
            thread.join(timeout=5)

    def _next_reply(self, key: str, body: dict[str, Any], headers: dict[str, str]) -> Reply:
        with self._lock:
            self.received.append(Received(key, body, headers, time.monotonic()))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            replies = self._scripts.get(key)
            if replies is None:
                return self.default(body)
            attempt = self._attempts[key]
            self._attempts[key] += 1
            return replies[min(attempt, len(replies) - 1)]

    def _done(self) -> None:
        with self._lock:
            self.in_flight -= 1


def echo_reply(body: dict[str, Any]) -> Reply:
    """Answer with the last message's text; token counts are word counts."""
    messages = body.get("messages") or [{"content": ""}]
    last = str(messages[-1].get("content", ""))
    prompt_words = sum(len(str(m.get("content", "")).split()) for m in messages)
    n = int(body.get("n") or 1)
    texts = [f"echo {i}: {last}" for i in range(n)]
    return Reply(
        text=texts,
        prompt_tokens=prompt_words,
        completion_tokens=sum(len(t.split()) for t in texts),
    )


def completion_body(reply: Reply, model: str, n: int) -> dict[str, Any]:
    """The JSON of a successful chat completion for a reply."""
    texts = reply.text if isinstance(reply.text, list) else [reply.text] * n
    body: dict[str, Any] = {
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": text},
                "finish_reason": reply.finish_reason,
            }
            for i, text in enumerate(texts)
        ],
    }
    if reply.usage:
        body["usage"] = {
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
            "total_tokens": reply.prompt_tokens + reply.completion_tokens,
        }
    return body


class _Handler(BaseHTTPRequestHandler):
    scripted: ScriptedOpenAIServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean

    def do_GET(self) -> None:
        if self.path in ("/health", "/v1/health"):
            self._send(200, b"{}")
        else:
            self._send(404, b'{"error": {"message": "not found"}}')

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if self.path != "/v1/chat/completions":
            self._send(404, b'{"error": {"message": "not found"}}')
            return
        body = json.loads(raw)
        messages = body.get("messages") or [{}]
        key = str(messages[-1].get("content", ""))
        headers = {k.lower(): v for k, v in self.headers.items()}
        reply = self.scripted._next_reply(key, body, headers)
        try:
            self._answer(reply, body)
        finally:
            self.scripted._done()

    def _answer(self, reply: Reply, body: dict[str, Any]) -> None:
        if reply.delay:
            time.sleep(reply.delay)
        if reply.drop:
            self.close_connection = True
            self.connection.close()
            return
        if reply.raw_body is not None:
            payload = reply.raw_body.encode()
        elif reply.status == 200:
            n = int(body.get("n") or 1)
            payload = json.dumps(completion_body(reply, str(body.get("model")), n)).encode()
        else:
            error = {"message": reply.message, "type": "scripted", "code": reply.status}
            payload = json.dumps({"error": error}).encode()
        self._send(reply.status, payload, reply.headers)

    def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout) before the answer
