"""``AsyncTesseraClient``: the asynchronous client of the Tessera API, the methods of ``TesseraClient`` awaited
(both describe their calls with ``_calls`` and share ``_http``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
from httpx_sse import aconnect_sse
from tenacity import AsyncRetrying

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


class AsyncTesseraClient:
    """Asynchronous client of the Tessera API: the methods of ``TesseraClient``, awaited.

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
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self._http = httpx.AsyncClient(
            base_url=url, headers=default_headers(api_key), timeout=as_timeout(timeout), transport=transport
        )

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncTesseraClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ---- transport

    async def _send_request(self, request: httpx.Request, idempotent: bool) -> httpx.Response:
        async def attempt() -> httpx.Response:
            response = await self._http.send(request)
            await response.aread()
            return check_response(response)

        try:
            return await AsyncRetrying(sleep=asyncio.sleep, **retrying_kwargs(self.retry, idempotent))(attempt)
        except RetryableResponse as exc:
            return exc.response

    async def _send(self, call: Call[Any]) -> httpx.Response:
        request = build(self._http, call)
        return await self._send_request(request, idempotent(call, request))

    async def _call(self, call: Call[M]) -> M:
        return parse(call, await self._send(call))

    async def _call_none(self, call: Call[Any]) -> None:
        raise_for_error(await self._send(call))

    # ---- files

    async def upload_file(self, data: bytes, filename: str = "image.png", content_type: str = "image/png") -> File:
        """Upload an image (PNG, JPEG or WebP) for trainings and generations to refer to by its id."""
        return await self._call(Calls.upload_file(data, filename, content_type))

    async def get_file(self, file_id: str) -> File:
        """A file, with a short-lived URL to its bytes."""
        return await self._call(Calls.get_file(file_id))

    async def delete_file(self, file_id: str) -> None:
        """Delete a file and its bytes."""
        await self._call_none(Calls.delete_file(file_id))

    # ---- jobs

    async def create_training(self, body: Body, *, idempotency_key: str | None = None) -> Job:
        """Start a training (``POST /v1/trainings``); a key is made up when none is given, so retries are safe."""
        return await self._call(Calls.create_training(body, idempotency_key))

    async def create_generation(
        self, body: Body, *, idempotency_key: str | None = None, wait: float | None = None
    ) -> Job:
        """Start a generation; ``wait`` (≤ 60 s) holds the answer until the job is done, if it gets done by then."""
        return await self._call(Calls.create_generation(body, idempotency_key, wait, self._http.timeout.read))

    async def get_job(self, job_id: str) -> Job:
        """A job as it stands."""
        return await self._call(Calls.get_job(job_id))

    async def list_jobs(
        self,
        *,
        kind: str | None = None,
        status: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> JobList:
        """One page of this tenant's jobs, newest first."""
        return await self._call(Calls.list_jobs(kind, status, limit, cursor))

    async def cancel(self, job_id: str) -> Job:
        """Cancel a job: a queued one at once, a running one at its next step."""
        return await self._call(Calls.cancel(job_id))

    async def webhook_deliveries(self, job_id: str) -> DeliveryList:
        """Every webhook delivery attempt of a job."""
        return await self._call(Calls.webhook_deliveries(job_id))

    async def wait(
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
            while not watch.done(job := await self.get_job(job_id)):
                await asyncio.sleep(poll)
            return job
        finally:
            watch.close()

    async def events(
        self, job_id: str, *, last_event_id: str | None = None, reconnects: int = 5
    ) -> AsyncIterator[JobEvent]:
        """The job's server-sent events as they arrive, until a terminal state.

        A dropped connection is resumed with ``Last-Event-ID``, so no event is missed or repeated; more than
        ``reconnects`` failures in a row without an event raise ``StreamDropped``.
        """
        resume = EventResume(job_id, last_event_id, reconnects, self.retry)
        timeout = resume.timeout(self._http.timeout)
        while True:
            problem: Exception
            try:
                async with aconnect_sse(
                    self._http, "GET", resume.path, headers=resume.headers(), timeout=timeout
                ) as source:
                    if source.response.status_code >= 400:
                        await source.response.aread()
                        resume.refuse(source.response)
                    async for sse in source.aiter_sse():
                        event = resume.take(sse)
                        if event is None:
                            continue
                        yield event
                        if event.job.terminal:
                            return
                problem = resume.ended()
            except (httpx.TransportError, RetryableResponse) as exc:
                problem = exc
            await asyncio.sleep(resume.delay(problem))

    # ---- concepts

    async def get_concept(self, ref: str) -> Concept:
        """A concept by name or id."""
        return await self._call(Calls.get_concept(ref))

    async def list_concepts(self, *, limit: int | None = None, cursor: str | None = None) -> ConceptList:
        """One page of this tenant's concepts, newest first."""
        return await self._call(Calls.list_concepts(limit, cursor))

    async def delete_concept(self, ref: str) -> None:
        """Delete a concept and its adapter; its name becomes free again."""
        await self._call_none(Calls.delete_concept(ref))

    # ---- webhooks

    async def webhook_secret(self) -> str:
        """The secret (``whsec_…``) that signs this tenant's webhooks."""
        return (await self._call(Calls.webhook_secret())).key

    async def rotate_webhook_secret(self) -> str:
        """Replace the webhook signing secret and return the new one."""
        return (await self._call(Calls.rotate_webhook_secret())).key

    # ---- outputs

    async def download(self, url: str | None) -> bytes:
        """The bytes of a signed URL (an output image, a mask); no API key is sent.

        ``url`` may be an output's ``url`` as it is: None (a file deleted since) raises ``ValueError``.
        """
        response = await self._send_request(download_request(self._http.base_url, url), True)
        raise_for_error(response)
        return response.content
