"""``TesseraClient``: the synchronous client of the Tessera API (``AsyncTesseraClient`` is its awaited twin, with
the same methods and arguments; both describe their calls with ``_calls`` and share ``_http``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
from httpx_sse import connect_sse
from tenacity import Retrying

from tessera_client._calls import DEFAULT_TIMEOUT, Body, Call, Calls, M
from tessera_client._http import (
    EventResume,
    JobWatch,
    as_timeout,
    build,
    default_headers,
    download_request,
    idempotent,
    parse,
    raise_for_error,
    retrying_kwargs,
)
from tessera_client.models import Concept, ConceptList, DeliveryList, File, Job, JobEvent, JobList
from tessera_client.retry import RetryableResponse, RetryPolicy, check_response


class TesseraClient:
    """Synchronous client of the Tessera API.

    Args:
        url: the API's base address (``http://127.0.0.1:8000``).
        api_key: a tenant's key, sent as ``Authorization: Bearer``.
        timeout: seconds per request (or an ``httpx.Timeout`` for connect/read/write/pool separately).
        retry: when and how failed requests are tried again (``tessera_client.NO_RETRY`` to never retry).
        transport: an httpx transport to send through (a proxy, a test transport).
    """

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self._http = httpx.Client(
            base_url=url, headers=default_headers(api_key), timeout=as_timeout(timeout), transport=transport
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> TesseraClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- transport

    def _send_request(self, request: httpx.Request, idempotent: bool) -> httpx.Response:
        def attempt() -> httpx.Response:
            response = self._http.send(request)
            response.read()
            return check_response(response)

        try:
            return Retrying(sleep=time.sleep, **retrying_kwargs(self.retry, idempotent))(attempt)
        except RetryableResponse as exc:
            return exc.response

    def _send(self, call: Call[Any]) -> httpx.Response:
        request = build(self._http, call)
        return self._send_request(request, idempotent(call, request))

    def _call(self, call: Call[M]) -> M:
        return parse(call, self._send(call))

    def _call_none(self, call: Call[Any]) -> None:
        raise_for_error(self._send(call))

    # ---- files

    def upload_file(self, data: bytes, filename: str = "image.png", content_type: str = "image/png") -> File:
        """Upload an image (PNG, JPEG or WebP) for trainings and generations to refer to by its id."""
        return self._call(Calls.upload_file(data, filename, content_type))

    def get_file(self, file_id: str) -> File:
        """A file, with a short-lived URL to its bytes."""
        return self._call(Calls.get_file(file_id))

    def delete_file(self, file_id: str) -> None:
        """Delete a file and its bytes."""
        self._call_none(Calls.delete_file(file_id))

    # ---- jobs

    def create_training(self, body: Body, *, idempotency_key: str | None = None) -> Job:
        """Start a training (``POST /v1/trainings``); a key is made up when none is given, so retries are safe."""
        return self._call(Calls.create_training(body, idempotency_key))

    def create_generation(self, body: Body, *, idempotency_key: str | None = None, wait: float | None = None) -> Job:
        """Start a generation; ``wait`` (≤ 60 s) holds the answer until the job is done, if it gets done by then."""
        return self._call(Calls.create_generation(body, idempotency_key, wait, self._http.timeout.read))

    def get_job(self, job_id: str) -> Job:
        """A job as it stands."""
        return self._call(Calls.get_job(job_id))

    def list_jobs(
        self,
        *,
        kind: str | None = None,
        status: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> JobList:
        """One page of this tenant's jobs, newest first."""
        return self._call(Calls.list_jobs(kind, status, limit, cursor))

    def cancel(self, job_id: str) -> Job:
        """Cancel a job: a queued one at once, a running one at its next step."""
        return self._call(Calls.cancel(job_id))

    def webhook_deliveries(self, job_id: str) -> DeliveryList:
        """Every webhook delivery attempt of a job."""
        return self._call(Calls.webhook_deliveries(job_id))

    def wait(
        self,
        job_id: str,
        *,
        timeout: float = 600.0,
        poll: float = 0.25,
        on_update: Callable[[Job], None] | None = None,
        progress: str | None = None,
    ) -> Job:
        """Poll a job until it is terminal and return it.

        Args:
            timeout: seconds before ``TimeoutError``.
            poll: seconds between reads.
            on_update: called with every state read.
            progress: a label: draw a progress line with it on stderr.
        """
        watch = JobWatch(job_id, timeout, on_update, progress)
        try:
            while not watch.done(job := self.get_job(job_id)):
                time.sleep(poll)
            return job
        finally:
            watch.close()

    def events(self, job_id: str, *, last_event_id: str | None = None, reconnects: int = 5) -> Iterator[JobEvent]:
        """The job's server-sent events as they arrive, until a terminal state.

        A dropped connection is resumed with ``Last-Event-ID``, so no event is missed or repeated; more than
        ``reconnects`` failures in a row without an event raise ``StreamDropped``.
        """
        resume = EventResume(job_id, last_event_id, reconnects, self.retry)
        timeout = resume.timeout(self._http.timeout)
        while True:
            problem: Exception
            try:
                with connect_sse(self._http, "GET", resume.path, headers=resume.headers(), timeout=timeout) as source:
                    if source.response.status_code >= 400:
                        source.response.read()
                        resume.refuse(source.response)
                    for sse in source.iter_sse():
                        event = resume.take(sse)
                        if event is None:
                            continue
                        yield event
                        if event.job.terminal:
                            return
                problem = resume.ended()
            except (httpx.TransportError, RetryableResponse) as exc:
                problem = exc
            time.sleep(resume.delay(problem))

    # ---- concepts

    def get_concept(self, ref: str) -> Concept:
        """A concept by name or id."""
        return self._call(Calls.get_concept(ref))

    def list_concepts(self, *, limit: int | None = None, cursor: str | None = None) -> ConceptList:
        """One page of this tenant's concepts, newest first."""
        return self._call(Calls.list_concepts(limit, cursor))

    def delete_concept(self, ref: str) -> None:
        """Delete a concept and its adapter; its name becomes free again."""
        self._call_none(Calls.delete_concept(ref))

    # ---- webhooks

    def webhook_secret(self) -> str:
        """The secret (``whsec_…``) that signs this tenant's webhooks."""
        return self._call(Calls.webhook_secret()).key

    def rotate_webhook_secret(self) -> str:
        """Replace the webhook signing secret and return the new one."""
        return self._call(Calls.rotate_webhook_secret()).key

    # ---- outputs

    def download(self, url: str | None) -> bytes:
        """The bytes of a signed URL (an output image, a mask); no API key is sent.

        ``url`` may be an output's ``url`` as it is: None (a file deleted since) raises ``ValueError``.
        """
        response = self._send_request(download_request(self._http.base_url, url), True)
        raise_for_error(response)
        return response.content
