"""Retries against a real HTTP server on loopback: what is retried, how long the client waits, what is not."""

from __future__ import annotations

import asyncio
import threading
import time
from http.server import BaseHTTPRequestHandler

import httpx
import pytest
import tessera_client as tc
from local_http import Seen, free_port, send, serve
from samples import file_body, job_bytes, problem

FAST = tc.RetryPolicy(attempts=4, initial=0.01, max_backoff=0.05, jitter=0.01, max_retry_after=5)


def _fail_then(status: int, failures: int, ok: bytes, retry_after: str | None = None):  # type: ignore[no-untyped-def]
    def answer(handler: BaseHTTPRequestHandler, request: Seen, index: int) -> None:
        if index < failures:
            headers = {"Retry-After": retry_after} if retry_after else {}
            send(handler, status, problem(status, "redis_unavailable" if status == 503 else "rate_limited"), headers)
        else:
            send(handler, 200, ok)

    return answer


def test_503_then_200_is_retried_and_returns_the_model() -> None:
    with serve(_fail_then(503, 2, job_bytes("job_a", status="running"))) as server:
        with tc.TesseraClient(server.url, "key", retry=FAST) as client:
            job = client.get_job("job_a")
    assert job.id == "job_a" and job.status == "running"
    assert [s.path for s in server.seen] == ["/v1/jobs/job_a"] * 3
    assert server.seen[0].headers["authorization"] == "Bearer key"


def test_429_waits_as_long_as_retry_after_says() -> None:
    with serve(_fail_then(429, 1, job_bytes("job_a"), retry_after="1")) as server:
        with tc.TesseraClient(server.url, "key", retry=FAST) as client:
            started = time.monotonic()
            client.get_job("job_a")
            waited = time.monotonic() - started
    # The exponential backoff of FAST is at most 0.05 s: only Retry-After explains a wait of a second.
    assert len(server.seen) == 2 and 1.0 <= waited < 3.0, waited


def test_a_retry_after_longer_than_the_policy_allows_is_raised_not_slept() -> None:
    with serve(_fail_then(429, 5, job_bytes(), retry_after="120")) as server:
        with tc.TesseraClient(server.url, "key", retry=FAST) as client:
            started = time.monotonic()
            with pytest.raises(tc.RateLimited) as caught:
                client.get_job("job_a")
    assert caught.value.retry_after == 120.0 and time.monotonic() - started < 1.0
    assert len(server.seen) == 1


def test_persistent_503_raises_the_typed_error_after_the_last_attempt() -> None:
    with serve(_fail_then(503, 99, b"{}")) as server:
        with tc.TesseraClient(server.url, "key", retry=FAST) as client:
            with pytest.raises(tc.ServiceUnavailable) as caught:
                client.get_job("job_a")
    assert caught.value.code == "redis_unavailable" and len(server.seen) == FAST.attempts


def test_create_calls_carry_one_idempotency_key_across_retries() -> None:
    with serve(_fail_then(503, 1, job_bytes("job_t", kind="training"))) as server:
        with tc.TesseraClient(server.url, "key", retry=FAST) as client:
            client.create_training({"concept": {"name": "rex", "class_word": "dog"}, "images": ["file_1"]})
            client.create_generation({"prompt": "a <rex>"}, idempotency_key="mine")
    keys = [s.headers.get("idempotency-key") for s in server.seen]
    assert len(keys) == 3 and keys[0] is not None and keys[0] == keys[1] and keys[2] == "mine"


def test_an_upload_without_a_key_is_not_retried_on_503() -> None:
    # Sending it again could store the file twice: the caller decides.
    with serve(_fail_then(503, 1, b"{}")) as server:
        with tc.TesseraClient(server.url, "key", retry=FAST) as client:
            with pytest.raises(tc.ServiceUnavailable):
                client.upload_file(b"\x89PNG...")
    assert len(server.seen) == 1 and server.seen[0].method == "POST"


def test_connect_errors_are_retried_until_the_server_comes_up() -> None:
    port = free_port()
    patient = tc.RetryPolicy(attempts=30, initial=0.05, max_backoff=0.1, jitter=0.01)
    started = threading.Event()
    served: list[int] = []

    def later() -> None:
        time.sleep(0.4)
        with serve(lambda h, s, i: send(h, 201, _file()), port=port) as server:
            started.set()
            while not server.seen:
                time.sleep(0.02)
            served.append(len(server.seen))
            time.sleep(0.1)

    thread = threading.Thread(target=later)
    thread.start()
    with tc.TesseraClient(f"http://127.0.0.1:{port}", "key", retry=patient) as client:
        # An upload is retried on a connect error: the request never reached a server.
        uploaded = client.upload_file(b"\x89PNG...")
    thread.join()
    assert started.is_set() and uploaded.id == "file_1" and served == [1]


def test_no_retry_policy_tries_once() -> None:
    with serve(_fail_then(503, 1, job_bytes())) as server:
        with tc.TesseraClient(server.url, "key", retry=tc.NO_RETRY) as client:
            with pytest.raises(tc.ServiceUnavailable):
                client.get_job("job_a")
    assert len(server.seen) == 1


def test_timeouts_are_the_clients() -> None:
    def slow(handler: BaseHTTPRequestHandler, request: Seen, index: int) -> None:
        time.sleep(1.0)
        send(handler, 200, job_bytes())

    with serve(slow) as server:
        with tc.TesseraClient(server.url, "key", timeout=0.2, retry=tc.NO_RETRY) as client:
            with pytest.raises(httpx.ReadTimeout):
                client.get_job("job_a")


def test_async_client_retries_the_same_way() -> None:
    async def run(url: str) -> tuple[tc.Job, float]:
        async with tc.AsyncTesseraClient(url, "key", retry=FAST) as client:
            started = time.monotonic()
            job = await client.get_job("job_a")
            return job, time.monotonic() - started

    with serve(_fail_then(429, 1, job_bytes("job_a"), retry_after="1")) as server:
        job, waited = asyncio.run(run(server.url))
    assert job.id == "job_a" and len(server.seen) == 2 and waited >= 1.0


def test_async_upload_junk_is_invalid_image() -> None:
    async def run(url: str) -> None:
        async with tc.AsyncTesseraClient(url, "key", retry=FAST) as client:
            await client.upload_file(b"junk")

    with serve(lambda h, s, i: send(h, 415, problem(415, "unsupported_media_type"))) as server:
        with pytest.raises(tc.InvalidImage):
            asyncio.run(run(server.url))


def _file() -> bytes:
    import json

    return json.dumps(file_body()).encode()
