"""A real HTTP server on loopback whose answers a test scripts: what the client meets on the wire, without the
service (these tests run where only the client package is installed)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Seen:
    """One request the server received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


Handler = Callable[[BaseHTTPRequestHandler, Seen, int], None]
"""Answers a request: (the handler to write to, the request, how many requests came before it)."""


@dataclass
class LocalServer:
    url: str
    port: int
    seen: list[Seen] = field(default_factory=list)


def free_port() -> int:
    """A TCP port nothing listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def send(
    handler: BaseHTTPRequestHandler, status: int, body: bytes = b"{}", headers: dict[str, str] | None = None
) -> None:
    """Write a whole answer with a Content-Length."""
    handler.send_response(status)
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    for name, value in all_headers.items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)
    handler.wfile.flush()


@contextmanager
def serve(answer: Handler, port: int = 0) -> Iterator[LocalServer]:
    """Run a threaded HTTP/1.1 server on loopback that answers every request with ``answer``."""
    lock = threading.Lock()
    seen: list[Seen] = []

    class _Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            request = Seen(
                self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, self.rfile.read(length)
            )
            with lock:
                index = len(seen)
                seen.append(request)
            answer(self, request, index)

        do_GET = do_POST = do_DELETE = _any

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep the test output clean

    server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    bound = int(server.server_address[1])
    try:
        yield LocalServer(f"http://127.0.0.1:{bound}", bound, seen)
    finally:
        server.shutdown()
        server.server_close()
