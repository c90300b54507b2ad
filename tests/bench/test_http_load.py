"""The benchmarks' load driver against a real uvicorn server: every request timed, a wrong status refused."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
import uvicorn

from bench.api_throughput import BODY, PATH, bare_app
from bench.http_load import LoadError, encode_post, post_load
from services.processes import free_port


@pytest.fixture(scope="module")
def bare_url() -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(bare_app(), port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        threading.Event().wait(0.05)
    assert server.started
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_every_request_is_timed_once(bare_url: str) -> None:
    latencies = asyncio.run(post_load(bare_url, PATH, BODY, headers={}, total=57, concurrency=4))
    assert len(latencies) == 57 and all(0 < s < 10 for s in latencies)


@pytest.mark.parametrize("path", [PATH, "/async" + PATH])
def test_an_answer_of_another_status_stops_the_run(bare_url: str, path: str) -> None:
    with pytest.raises(LoadError, match="answered 422"):
        asyncio.run(post_load(bare_url, path, {"width": 7}, headers={}, total=5, concurrency=2))


def test_the_request_carries_its_headers_and_exact_body_length() -> None:
    raw = encode_post("http://127.0.0.1:8123", PATH, {"a": "é"}, {"Authorization": "Bearer k"})
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /v1/generations HTTP/1.1\r\nHost: 127.0.0.1:8123\r\n")
    assert b"Authorization: Bearer k" in head and f"Content-Length: {len(body)}".encode() in head
