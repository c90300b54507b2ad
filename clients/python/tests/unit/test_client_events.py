"""Job events over a real SSE server on loopback: resumed with Last-Event-ID after a drop, yielded as they arrive."""

from __future__ import annotations

import asyncio
import threading
from http.server import BaseHTTPRequestHandler

import pytest
import tessera_client as tc
from local_http import Seen, send, serve
from samples import job_bytes, problem

FAST = tc.RetryPolicy(attempts=3, initial=0.01, max_backoff=0.05, jitter=0.01)
STATES = ["queued", "running", "running", "succeeded"]
IDS = [f"{i + 1}-0" for i in range(len(STATES))]


def _start_stream(handler: BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream")
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()


def _chunk(handler: BaseHTTPRequestHandler, text: str) -> None:
    data = text.encode()
    handler.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
    handler.wfile.flush()


def _event(handler: BaseHTTPRequestHandler, index: int) -> None:
    body = job_bytes("job_s", status=STATES[index], progress={"fraction": index / 3, "stage": "generating"})
    _chunk(handler, f"id: {IDS[index]}\nevent: job\ndata: {body.decode()}\n\n")


def _end(handler: BaseHTTPRequestHandler) -> None:
    handler.wfile.write(b"0\r\n\r\n")
    handler.wfile.flush()


def _resuming_server(drop_after: int, clean_eof: bool):  # type: ignore[no-untyped-def]
    """Sends events from after Last-Event-ID; the first connection stops after ``drop_after`` events: cut mid-body
    (no closing chunk: a transport error), or closed cleanly (a stream that ended before the job did)."""

    def answer(handler: BaseHTTPRequestHandler, request: Seen, index: int) -> None:
        last = request.headers.get("last-event-id")
        start = IDS.index(last) + 1 if last else 0
        _start_stream(handler)
        _chunk(handler, ": keep-alive\n\n")
        stop = start + drop_after if index == 0 else len(STATES)
        for i in range(start, stop):
            _event(handler, i)
        if index == 0 and clean_eof:
            _end(handler)
        elif index != 0:
            _end(handler)
        handler.close_connection = True

    return answer


@pytest.mark.parametrize("clean_eof", [False, True], ids=["cut-mid-body", "ended-early"])
def test_a_dropped_stream_resumes_after_the_last_event(clean_eof: bool) -> None:
    with serve(_resuming_server(drop_after=2, clean_eof=clean_eof)) as server:
        with tc.TesseraClient(server.url, "key", retry=FAST) as client:
            events = list(client.events("job_s"))
    assert [e.id for e in events] == IDS  # each event once, in order
    assert [e.job.status for e in events] == STATES and events[-1].job.terminal
    assert [s.headers.get("last-event-id") for s in server.seen] == [None, "2-0"]
    assert server.seen[0].headers["accept"] == "text/event-stream"


def test_async_stream_resumes_too() -> None:
    async def run(url: str) -> list[tc.JobEvent]:
        async with tc.AsyncTesseraClient(url, "key", retry=FAST) as client:
            return [event async for event in client.events("job_s", last_event_id="1-0")]

    with serve(_resuming_server(drop_after=1, clean_eof=False)) as server:
        events = asyncio.run(run(server.url))
    assert [e.id for e in events] == IDS[1:]
    assert [s.headers.get("last-event-id") for s in server.seen] == ["1-0", "2-0"]


def test_a_stream_that_keeps_dropping_raises_stream_dropped() -> None:
    def never(handler: BaseHTTPRequestHandler, request: Seen, index: int) -> None:
        _start_stream(handler)
        _chunk(handler, ": keep-alive\n\n")
        handler.close_connection = True  # cut without a single event

    with serve(never) as server:
        with tc.TesseraClient(server.url, "key", retry=FAST) as client:
            with pytest.raises(tc.StreamDropped):
                list(client.events("job_s", reconnects=2))
    assert len(server.seen) == 3


def test_a_refused_stream_raises_the_typed_error() -> None:
    with serve(lambda h, s, i: send(h, 404, problem(404, "not_found"))) as server:
        with tc.TesseraClient(server.url, "key", retry=FAST) as client:
            with pytest.raises(tc.NotFound):
                list(client.events("job_x"))


def test_async_events_arrive_one_by_one_while_the_stream_is_open() -> None:
    # The server sends an event and then holds the stream open until the client has yielded it: a client that
    # collected the stream before yielding would leave every acknowledgement to time out.
    acks = [threading.Event() for _ in STATES]
    in_time: list[bool] = []

    def answer(handler: BaseHTTPRequestHandler, request: Seen, index: int) -> None:
        _start_stream(handler)
        for i in range(len(STATES)):
            _event(handler, i)
            in_time.append(acks[i].wait(timeout=5))
        _end(handler)
        handler.close_connection = True

    async def run(url: str) -> list[str]:
        statuses = []
        async with tc.AsyncTesseraClient(url, "key", retry=FAST) as client:
            async for event in client.events("job_s"):
                statuses.append(event.job.status)
                acks[len(statuses) - 1].set()
        return statuses

    with serve(answer) as server:
        statuses = asyncio.run(run(server.url))
    assert statuses == STATES and in_time == [True] * len(STATES)


def test_sync_events_arrive_one_by_one_too() -> None:
    acks = [threading.Event() for _ in STATES]
    in_time: list[bool] = []

    def answer(handler: BaseHTTPRequestHandler, request: Seen, index: int) -> None:
        _start_stream(handler)
        for i in range(len(STATES)):
            _event(handler, i)
            in_time.append(acks[i].wait(timeout=5))
        _end(handler)
        handler.close_connection = True

    with serve(answer) as server:
        with tc.TesseraClient(server.url, "key", retry=FAST) as client:
            for i, event in enumerate(client.events("job_s")):
                assert event.job.status == STATES[i]
                acks[i].set()
    assert in_time == [True] * len(STATES)
