"""A fault-injecting HTTP proxy in front of the test S3 server, for faults real S3 produces.

Workers are pointed at the proxy's endpoint; each request is forwarded to moto unless a
`Fault` matches it (method, a substring of the path, and how many more times it fires). The
faults are the ones that break exactly-once protocols on real endpoints:

- `lose_response`: forward, let the upstream commit, then close the connection unanswered
  (the client retries a PUT that landed: with If-None-Match the retry gets 412);
- `error_after_commit`: forward, then answer 500 InternalError;
- `conflict`: answer 409 ConditionalRequestConflict without forwarding;
- `drop_if_none_match`: forward with the If-None-Match header removed (an endpoint that
  ignores conditional writes);
- `reset_mid_body`: forward a GET, send the headers and half the body, then close;
- `blackhole`: accept the request and never answer (until the proxy stops).

Every request seen is logged (method, path, the fault applied) for assertions.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

ACTIONS = (
    "lose_response",
    "error_after_commit",
    "conflict",
    "drop_if_none_match",
    "reset_mid_body",
    "blackhole",
)
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection"}


@dataclass
class Fault:
    """Apply `action` to the next `times` requests with this method whose path contains
    `path`; `times=None` applies it to every matching request."""

    method: str
    path: str
    action: str
    times: int | None = 1

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown fault action {self.action!r} (one of {ACTIONS})")


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    fault: str | None


class FaultProxy:
    """The proxy's state: its faults (editable while it runs) and the requests it saw."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.faults: list[Fault] = []
        self.seen: list[Seen] = []
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self.endpoint = ""

    def add(self, *faults: Fault) -> None:
        with self._lock:
            self.faults.extend(faults)

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()

    def take(self, method: str, path: str) -> str | None:
        """The action for this request (using one of its fault's shots), or None."""
        with self._lock:
            for fault in self.faults:
                if fault.method == method and fault.path in path:
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times == 0:
                            self.faults.remove(fault)
                    self.seen.append(Seen(method, path, fault.action))
                    return fault.action
            self.seen.append(Seen(method, path, None))
            return None

    def applied(self, action: str) -> int:
        with self._lock:
            return sum(1 for s in self.seen if s.fault == action)


def _handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _forward(self, drop: tuple[str, ...] = ()) -> http.client.HTTPResponse:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {
                k: v
                for k, v in self.headers.items()
                if k.lower() not in HOP_HEADERS and k.lower() not in drop
            }
            conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
            conn.request(self.command, self.path, body=body, headers=headers)
            return conn.getresponse()

        def _reply(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
            self.send_response(status)
            for key, value in headers:
                if key.lower() not in HOP_HEADERS and key.lower() != "content-length":
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _error(self, status: int, code: str) -> None:
            body = (
                f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                f"<Message>{code} (injected)</Message></Error>"
            ).encode()
            self._reply(status, [("Content-Type", "application/xml")], body)

        def _handle(self) -> None:
            action = proxy.take(self.command, self.path)
            if action == "blackhole":
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                proxy.stopping.wait()
                self.close_connection = True
                return
            if action == "conflict":
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self._error(409, "ConditionalRequestConflict")
                return
            drop = ("if-none-match",) if action == "drop_if_none_match" else ()
            response = self._forward(drop)
            body = response.read()
            if action == "lose_response":
                self.close_connection = True
                return
            if action == "error_after_commit":
                self._error(500, "InternalError")
                return
            if action == "reset_mid_body" and len(body) > 1:
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in HOP_HEADERS:
                        self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self._reply(response.status, response.getheaders(), body)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

    return Handler


@contextmanager
def fault_proxy(upstream: str) -> Iterator[FaultProxy]:
    """A running proxy on a free loopback port in front of `upstream`."""
    proxy = FaultProxy(upstream)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(proxy))
    server.daemon_threads = True
    proxy.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.stopping.set()
        server.shutdown()
        server.server_close()
