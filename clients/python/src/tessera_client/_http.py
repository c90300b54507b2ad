"""What both clients share on the wire: default headers, building and parsing a call, the retry settings, the
event stream's timeout and resumption, and the polling of ``wait``; the clients only send and sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NoReturn

import httpx
from httpx_sse import ServerSentEvent
from tenacity import retry_if_exception, stop_after_attempt

from tessera_client import __version__
from tessera_client._calls import Call, M
from tessera_client.errors import StreamDropped, error_for
from tessera_client.models import Job, JobEvent
from tessera_client.progress import ProgressLine
from tessera_client.retry import (
    RetryableResponse,
    RetryPolicy,
    backoff,
    check_response,
    is_idempotent,
    reconnect_delay,
    should_retry,
)

# A job's event stream sends a keep-alive comment every few seconds (15 s by default); no byte for this long means
# the connection is dead even when no error reached us, so the stream is resumed on a fresh one.
EVENTS_READ_TIMEOUT = 60.0

USER_AGENT = f"tessera-client/{__version__}"


def default_headers(api_key: str | None) -> dict[str, str]:
    """The headers of every API request: the user agent and, with a key, its bearer authorization."""
    headers = {"User-Agent": USER_AGENT}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def as_timeout(timeout: float | httpx.Timeout) -> httpx.Timeout:
    """A client's timeout option as an ``httpx.Timeout``."""
    return timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)


def build(http: httpx.Client | httpx.AsyncClient, call: Call[Any]) -> httpx.Request:
    """The request of ``call`` on ``http`` (its base address and headers)."""
    return http.build_request(
        call.method,
        call.path,
        params=call.params,
        json=call.json,
        files=call.files,
        headers=call.headers,
        timeout=call.timeout if call.timeout is not None else httpx.USE_CLIENT_DEFAULT,
    )


def idempotent(call: Call[Any], request: httpx.Request) -> bool:
    """Whether ``call`` may be sent again after a lost answer."""
    return call.idempotent if call.idempotent is not None else is_idempotent(request)


def retrying_kwargs(policy: RetryPolicy, request_idempotent: bool) -> dict[str, Any]:
    """The arguments of tenacity's ``Retrying``/``AsyncRetrying`` for one request under ``policy``."""
    return {
        "stop": stop_after_attempt(max(1, policy.attempts)),
        "wait": backoff(policy),
        "retry": retry_if_exception(lambda exc: should_retry(exc, idempotent=request_idempotent, policy=policy)),
        "reraise": True,
    }


def raise_for_error(response: httpx.Response) -> None:
    """Raise the typed error of an answer with an error status; any other answer passes."""
    if response.status_code >= 400:
        raise error_for(response)


def parse(call: Call[M], response: httpx.Response) -> M:
    """The model of ``call``'s answer, or its typed error."""
    raise_for_error(response)
    assert call.model is not None
    return call.model.model_validate_json(response.content)


def download_request(base_url: httpx.URL, url: str | None) -> httpx.Request:
    """The request for the bytes of a signed URL, without the API key; None (a file deleted since) raises
    ``ValueError``."""
    if not url:
        raise ValueError("no URL to download: the file was deleted, or the answer carried no signed URL")
    # Signed URLs are absolute; a relative one is taken as relative to the API.
    return httpx.Request("GET", base_url.join(url), headers={"User-Agent": USER_AGENT})


class EventResume:
    """Where a job's event stream stands across reconnections: the last event id, failures in a row, and how long
    to wait before the next connection."""

    def __init__(self, job_id: str, last_event_id: str | None, reconnects: int, policy: RetryPolicy) -> None:
        self.job_id = job_id
        self.path = f"/v1/jobs/{job_id}/events"
        self.last = last_event_id
        self.failures = 0
        self.reconnects = reconnects
        self.policy = policy

    @staticmethod
    def timeout(client_timeout: httpx.Timeout) -> httpx.Timeout:
        """The client's timeout with the stream's longer read timeout."""
        t = client_timeout
        return httpx.Timeout(connect=t.connect, read=EVENTS_READ_TIMEOUT, write=t.write, pool=t.pool)

    def headers(self) -> dict[str, str]:
        """The headers of the next connection: ``Last-Event-ID`` once an event was seen."""
        return {"Last-Event-ID": self.last} if self.last else {}

    def refuse(self, response: httpx.Response) -> NoReturn:
        """Raise for a stream answered with an error status (read already): retryable or typed."""
        check_response(response)
        raise error_for(response)

    def take(self, sse: ServerSentEvent) -> JobEvent | None:
        """The event in ``sse``, remembered as the last one; None for anything without data (a bare id, a retry
        hint): the stream sends the Job as JSON on every change."""
        if not sse.data:
            return None
        event = JobEvent(id=sse.id or None, event=sse.event or "job", job=Job.model_validate_json(sse.data))
        self.last = event.id or self.last
        self.failures = 0
        return event

    def ended(self) -> StreamDropped:
        """The problem of a stream that closed before the job was done."""
        return StreamDropped(f"the event stream of job {self.job_id} ended before the job did")

    def delay(self, problem: Exception) -> float:
        """Seconds to wait before reconnecting after ``problem``; ``StreamDropped`` after too many in a row."""
        self.failures += 1
        if self.failures > self.reconnects:
            raise StreamDropped(
                f"the event stream of job {self.job_id} dropped {self.failures} times in a row"
            ) from problem
        wait = problem.retry_after if isinstance(problem, RetryableResponse) else None
        return wait if wait is not None else reconnect_delay(self.policy, self.failures)


class JobWatch:
    """What ``wait`` does with each state of a job it reads: the progress line, the caller's hook, the deadline."""

    def __init__(
        self, job_id: str, timeout: float, on_update: Callable[[Job], None] | None, progress: str | None
    ) -> None:
        self.job_id = job_id
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.on_update = on_update
        self.line = ProgressLine(progress) if progress is not None else None

    def done(self, job: Job) -> bool:
        """Show ``job``; True when it is terminal, ``TimeoutError`` when the deadline has passed."""
        if self.line is not None:
            self.line.update(job)
        if self.on_update is not None:
            self.on_update(job)
        if job.terminal:
            return True
        if time.monotonic() > self.deadline:
            raise TimeoutError(f"job {self.job_id} still {job.status} after {self.timeout:.0f} s")
        return False

    def close(self) -> None:
        """End the progress line, if one is drawn."""
        if self.line is not None:
            self.line.close()
