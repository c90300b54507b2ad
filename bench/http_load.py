"""A light HTTP/1.1 load driver for the API benchmarks: keep-alive connections on asyncio streams, the request
encoded once, each answer read by its ``Content-Length``.

Why not httpx: on 2 cores the load generator shares the CPU with the server it measures, and httpx's client spends
more CPU per request than a bare FastAPI endpoint does. Driven by it, the bare endpoint topped out near 950
requests/s (its latencies bimodal, set by the client's scheduling), where this driver reaches about 3000: the
baseline arm measured the client, and every ratio against it read low. This driver costs a few tens of
microseconds per request, so the server is the bottleneck in every arm.
"""

from __future__ import annotations

import asyncio
import json
import time
from urllib.parse import urlsplit


class LoadError(RuntimeError):
    """An answer that was not the expected status, or a connection that closed mid-answer."""


def encode_post(url: str, path: str, body: object, headers: dict[str, str]) -> bytes:
    """The bytes of one keep-alive ``POST path`` with a JSON ``body`` to the server at ``url``."""
    parts = urlsplit(url)
    payload = json.dumps(body).encode()
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {parts.hostname}:{parts.port}",
        "Content-Type: application/json",
        f"Content-Length: {len(payload)}",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


async def _answer(reader: asyncio.StreamReader) -> int:
    """Read one answer (status line, headers, a ``Content-Length`` body); its status code."""
    status_line = await reader.readline()
    if not status_line:
        raise LoadError("the server closed the connection")
    length = None
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length is None:
        raise LoadError(f"an answer without Content-Length: {status_line!r}")
    await reader.readexactly(length)
    return int(status_line.split(b" ", 2)[1])


async def post_load(
    url: str,
    path: str,
    body: object,
    *,
    headers: dict[str, str],
    total: int,
    concurrency: int,
    expect: int = 202,
) -> list[float]:
    """POST ``body`` to ``url + path`` ``total`` times over ``concurrency`` keep-alive connections, each with one
    request in flight; the latency of each request in seconds (send to last byte of the answer).

    Raises:
        LoadError: an answer's status was not ``expect``, or a connection closed.
    """
    request = encode_post(url, path, body, headers)
    parts = urlsplit(url)
    remaining = iter(range(total))
    latencies: list[float] = []

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        try:
            for _ in remaining:
                started = time.perf_counter()
                writer.write(request)
                status = await _answer(reader)
                latencies.append(time.perf_counter() - started)
                if status != expect:
                    raise LoadError(f"POST {path} answered {status}, expected {expect}")
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return latencies
