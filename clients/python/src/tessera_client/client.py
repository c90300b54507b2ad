"""``TesseraClient`` (sync) and ``AsyncTesseraClient`` (async): the same methods, with the same arguments.

Each API call is described once (``_Call``: method, path, body, headers, the model of the answer) by a function of
``_calls``; the two clients only differ in how they send it and sleep between tries.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import httpx
from httpx_sse import ServerSentEvent, aconnect_sse, connect_sse
from pydantic import BaseModel
from tenacity import AsyncRetrying, Retrying, retry_if_exception, stop_after_attempt

from tessera_client import __version__
from tessera_client.errors import StreamDropped, error_for
from tessera_client.models import (
    Concept,
    ConceptList,
    DeliveryList,
    File,
    Job,
    JobEvent,
    JobList,
    WebhookSecret,
)
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

M = TypeVar("M", bound=BaseModel)
Body = Mapping[str, Any] | BaseModel
"""A request body: a mapping as in the API reference, or any pydantic model that dumps to one."""

DEFAULT_TIMEOUT = 30.0
# A job's event stream sends a keep-alive comment every few seconds (15 s by default); no byte for this long means
# the connection is dead even when no error reached us, so the stream is resumed on a fresh one.
EVENTS_READ_TIMEOUT = 60.0


@dataclass(frozen=True)
class _Call(Generic[M]):
    """One API call: what to send and which model the answer is."""

    method: str
    path: str
    model: type[M] | None
    params: dict[str, Any] | None = None
    json: Any = None
    files: dict[str, tuple[str, bytes, str]] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None
    # None: idempotent by its method or its Idempotency-Key (retry.is_idempotent); True for a POST the server
    # documents as idempotent.
    idempotent: bool | None = None


def _dump(body: Body) -> Any:
    if isinstance(body, BaseModel):
        return body.model_dump(mode="json", exclude_none=True)
    return dict(body)


def _create_headers(idempotency_key: str | None, wait: float | None = None) -> dict[str, str]:
    # Every create call carries a key, so a retry after a lost answer replays the first job instead of making a
    # second one.
    headers = {"Idempotency-Key": idempotency_key or f"tc-{uuid.uuid4().hex}"}
    if wait:
        headers["Prefer"] = f"wait={int(wait)}"
    return headers


class _Calls:
    """The API's calls, shared by both clients."""

    @staticmethod
    def upload_file(data: bytes, filename: str, content_type: str) -> _Call[File]:
        return _Call("POST", "/v1/files", File, files={"file": (filename, data, content_type)})

    @staticmethod
    def get_file(file_id: str) -> _Call[File]:
        return _Call("GET", f"/v1/files/{file_id}", File)

    @staticmethod
    def delete_file(file_id: str) -> _Call[BaseModel]:
        return _Call("DELETE", f"/v1/files/{file_id}", None)

    @staticmethod
    def create_training(body: Body, idempotency_key: str | None) -> _Call[Job]:
        return _Call("POST", "/v1/trainings", Job, json=_dump(body), headers=_create_headers(idempotency_key))

    @staticmethod
    def create_generation(
        body: Body, idempotency_key: str | None, wait: float | None, timeout: float | None
    ) -> _Call[Job]:
        # Prefer: wait holds the answer up to ``wait`` seconds, so the read must be allowed that long and a bit.
        read = None if not wait else max(timeout or DEFAULT_TIMEOUT, wait + 10)
        return _Call(
            "POST",
            "/v1/generations",
            Job,
            json=_dump(body),
            headers=_create_headers(idempotency_key, wait),
            timeout=read,
        )

    @staticmethod
    def get_job(job_id: str) -> _Call[Job]:
        return _Call("GET", f"/v1/jobs/{job_id}", Job)

    @staticmethod
    def list_jobs(kind: str | None, status: str | None, limit: int | None, cursor: str | None) -> _Call[JobList]:
        params = {k: v for k, v in {"kind": kind, "status": status, "limit": limit, "cursor": cursor}.items() if v}
        return _Call("GET", "/v1/jobs", JobList, params=params)

    @staticmethod
    def cancel(job_id: str) -> _Call[Job]:
        # Canceling is idempotent on the server (a second cancel answers the same job), so it may be retried.
        return _Call("POST", f"/v1/jobs/{job_id}/cancel", Job, idempotent=True)

    @staticmethod
    def webhook_deliveries(job_id: str) -> _Call[DeliveryList]:
        return _Call("GET", f"/v1/jobs/{job_id}/webhook_deliveries", DeliveryList)

    @staticmethod
    def get_concept(ref: str) -> _Call[Concept]:
        return _Call("GET", f"/v1/concepts/{ref}", Concept)

    @staticmethod
    def list_concepts(limit: int | None, cursor: str | None) -> _Call[ConceptList]:
        params = {k: v for k, v in {"limit": limit, "cursor": cursor}.items() if v}
        return _Call("GET", "/v1/concepts", ConceptList, params=params)

    @staticmethod
    def delete_concept(ref: str) -> _Call[BaseModel]:
        return _Call("DELETE", f"/v1/concepts/{ref}", None)

    @staticmethod
    def webhook_secret() -> _Call[WebhookSecret]:
        return _Call("GET", "/v1/webhooks/secret", WebhookSecret)

    @staticmethod
    def rotate_webhook_secret() -> _Call[WebhookSecret]:
        return _Call("POST", "/v1/webhooks/secret/rotate", WebhookSecret)


def _headers(api_key: str | None) -> dict[str, str]:
    headers = {"User-Agent": f"tessera-client/{__version__}"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def _parse(call: _Call[M], response: httpx.Response) -> M:
    if response.status_code >= 400:
        raise error_for(response)
    assert call.model is not None
    return call.model.model_validate_json(response.content)


def _event(sse: ServerSentEvent) -> JobEvent | None:
    # The stream sends the Job as JSON on every change; anything without data (a bare id, a retry hint) is not
    # an event for the caller.
    if not sse.data:
        return None
    return JobEvent(id=sse.id or None, event=sse.event or "job", job=Job.model_validate_json(sse.data))


def _build(http: httpx.Client | httpx.AsyncClient, call: _Call[Any]) -> httpx.Request:
    return http.build_request(
        call.method,
        call.path,
        params=call.params,
        json=call.json,
        files=call.files,
        headers=call.headers,
        timeout=call.timeout if call.timeout is not None else httpx.USE_CLIENT_DEFAULT,
    )


def _idempotent(call: _Call[Any], request: httpx.Request) -> bool:
    return call.idempotent if call.idempotent is not None else is_idempotent(request)


def _signed_url(url: str | None) -> str:
    if not url:
        raise ValueError("no URL to download: the file was deleted, or the answer carried no signed URL")
    return url


def _retrying_kwargs(policy: RetryPolicy, request_idempotent: bool) -> dict[str, Any]:
    return {
        "stop": stop_after_attempt(max(1, policy.attempts)),
        "wait": backoff(policy),
        "retry": retry_if_exception(lambda exc: should_retry(exc, idempotent=request_idempotent, policy=policy)),
        "reraise": True,
    }


def _timeout(timeout: float | httpx.Timeout) -> httpx.Timeout:
    return timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)


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
            base_url=url, headers=_headers(api_key), timeout=_timeout(timeout), transport=transport
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
            return Retrying(sleep=time.sleep, **_retrying_kwargs(self.retry, idempotent))(attempt)
        except RetryableResponse as exc:
            return exc.response

    def _send(self, call: _Call[Any]) -> httpx.Response:
        request = _build(self._http, call)
        return self._send_request(request, _idempotent(call, request))

    def _call(self, call: _Call[M]) -> M:
        return _parse(call, self._send(call))

    def _call_none(self, call: _Call[Any]) -> None:
        response = self._send(call)
        if response.status_code >= 400:
            raise error_for(response)

    # ---- files

    def upload_file(self, data: bytes, filename: str = "image.png", content_type: str = "image/png") -> File:
        """Upload an image (PNG, JPEG or WebP) for trainings and generations to refer to by its id."""
        return self._call(_Calls.upload_file(data, filename, content_type))

    def get_file(self, file_id: str) -> File:
        """A file, with a short-lived URL to its bytes."""
        return self._call(_Calls.get_file(file_id))

    def delete_file(self, file_id: str) -> None:
        """Delete a file and its bytes."""
        self._call_none(_Calls.delete_file(file_id))

    # ---- jobs

    def create_training(self, body: Body, *, idempotency_key: str | None = None) -> Job:
        """Start a training (``POST /v1/trainings``); a key is made up when none is given, so retries are safe."""
        return self._call(_Calls.create_training(body, idempotency_key))

    def create_generation(self, body: Body, *, idempotency_key: str | None = None, wait: float | None = None) -> Job:
        """Start a generation; ``wait`` (≤ 60 s) holds the answer until the job is done, if it gets done by then."""
        return self._call(_Calls.create_generation(body, idempotency_key, wait, self._http.timeout.read))

    def get_job(self, job_id: str) -> Job:
        """A job as it stands."""
        return self._call(_Calls.get_job(job_id))

    def list_jobs(
        self,
        *,
        kind: str | None = None,
        status: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> JobList:
        """One page of this tenant's jobs, newest first."""
        return self._call(_Calls.list_jobs(kind, status, limit, cursor))

    def cancel(self, job_id: str) -> Job:
        """Cancel a job: a queued one at once, a running one at its next step."""
        return self._call(_Calls.cancel(job_id))

    def webhook_deliveries(self, job_id: str) -> DeliveryList:
        """Every webhook delivery attempt of a job."""
        return self._call(_Calls.webhook_deliveries(job_id))

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
        deadline = time.monotonic() + timeout
        line = ProgressLine(progress) if progress is not None else None
        try:
            while True:
                job = self.get_job(job_id)
                if line is not None:
                    line.update(job)
                if on_update is not None:
                    on_update(job)
                if job.terminal:
                    return job
                if time.monotonic() > deadline:
                    raise TimeoutError(f"job {job_id} still {job.status} after {timeout:.0f} s")
                time.sleep(poll)
        finally:
            if line is not None:
                line.close()

    def events(self, job_id: str, *, last_event_id: str | None = None, reconnects: int = 5) -> Iterator[JobEvent]:
        """The job's server-sent events as they arrive, until a terminal state.

        A dropped connection is resumed with ``Last-Event-ID``, so no event is missed or repeated; more than
        ``reconnects`` failures in a row without an event raise ``StreamDropped``.
        """
        last = last_event_id
        failures = 0
        path = f"/v1/jobs/{job_id}/events"
        while True:
            headers = {"Last-Event-ID": last} if last else {}
            problem: Exception
            try:
                with connect_sse(self._http, "GET", path, headers=headers, timeout=self._events_timeout()) as source:
                    response = source.response
                    if response.status_code >= 400:
                        response.read()
                        check_response(response)
                        raise error_for(response)
                    for sse in source.iter_sse():
                        event = _event(sse)
                        if event is None:
                            continue
                        last = event.id or last
                        failures = 0
                        yield event
                        if event.job.terminal:
                            return
                problem = StreamDropped(f"the event stream of job {job_id} ended before the job did")
            except (httpx.TransportError, RetryableResponse) as exc:
                problem = exc
            failures += 1
            if failures > reconnects:
                raise StreamDropped(f"the event stream of job {job_id} dropped {failures} times in a row") from problem
            wait = problem.retry_after if isinstance(problem, RetryableResponse) else None
            time.sleep(wait if wait is not None else reconnect_delay(self.retry, failures))

    def _events_timeout(self) -> httpx.Timeout:
        t = self._http.timeout
        return httpx.Timeout(connect=t.connect, read=EVENTS_READ_TIMEOUT, write=t.write, pool=t.pool)

    # ---- concepts

    def get_concept(self, ref: str) -> Concept:
        """A concept by name or id."""
        return self._call(_Calls.get_concept(ref))

    def list_concepts(self, *, limit: int | None = None, cursor: str | None = None) -> ConceptList:
        """One page of this tenant's concepts, newest first."""
        return self._call(_Calls.list_concepts(limit, cursor))

    def delete_concept(self, ref: str) -> None:
        """Delete a concept and its adapter; its name becomes free again."""
        self._call_none(_Calls.delete_concept(ref))

    # ---- webhooks

    def webhook_secret(self) -> str:
        """The secret (``whsec_…``) that signs this tenant's webhooks."""
        return self._call(_Calls.webhook_secret()).key

    def rotate_webhook_secret(self) -> str:
        """Replace the webhook signing secret and return the new one."""
        return self._call(_Calls.rotate_webhook_secret()).key

    # ---- outputs

    def download(self, url: str | None) -> bytes:
        """The bytes of a signed URL (an output image, a mask); no API key is sent.

        ``url`` may be an output's ``url`` as it is: None (a file deleted since) raises ``ValueError``.
        """
        url = _signed_url(url)
        # Signed URLs are absolute; a relative one is taken as relative to the API.
        request = httpx.Request(
            "GET", self._http.base_url.join(url), headers={"User-Agent": f"tessera-client/{__version__}"}
        )
        response = self._send_request(request, True)
        if response.status_code >= 400:
            raise error_for(response)
        return response.content


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
            base_url=url, headers=_headers(api_key), timeout=_timeout(timeout), transport=transport
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
            return await AsyncRetrying(sleep=asyncio.sleep, **_retrying_kwargs(self.retry, idempotent))(attempt)
        except RetryableResponse as exc:
            return exc.response

    async def _send(self, call: _Call[Any]) -> httpx.Response:
        request = _build(self._http, call)
        return await self._send_request(request, _idempotent(call, request))

    async def _call(self, call: _Call[M]) -> M:
        return _parse(call, await self._send(call))

    async def _call_none(self, call: _Call[Any]) -> None:
        response = await self._send(call)
        if response.status_code >= 400:
            raise error_for(response)

    # ---- files

    async def upload_file(self, data: bytes, filename: str = "image.png", content_type: str = "image/png") -> File:
        """Upload an image (PNG, JPEG or WebP) for trainings and generations to refer to by its id."""
        return await self._call(_Calls.upload_file(data, filename, content_type))

    async def get_file(self, file_id: str) -> File:
        """A file, with a short-lived URL to its bytes."""
        return await self._call(_Calls.get_file(file_id))

    async def delete_file(self, file_id: str) -> None:
        """Delete a file and its bytes."""
        await self._call_none(_Calls.delete_file(file_id))

    # ---- jobs

    async def create_training(self, body: Body, *, idempotency_key: str | None = None) -> Job:
        """Start a training (``POST /v1/trainings``); a key is made up when none is given, so retries are safe."""
        return await self._call(_Calls.create_training(body, idempotency_key))

    async def create_generation(
        self, body: Body, *, idempotency_key: str | None = None, wait: float | None = None
    ) -> Job:
        """Start a generation; ``wait`` (≤ 60 s) holds the answer until the job is done, if it gets done by then."""
        return await self._call(_Calls.create_generation(body, idempotency_key, wait, self._http.timeout.read))

    async def get_job(self, job_id: str) -> Job:
        """A job as it stands."""
        return await self._call(_Calls.get_job(job_id))

    async def list_jobs(
        self,
        *,
        kind: str | None = None,
        status: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> JobList:
        """One page of this tenant's jobs, newest first."""
        return await self._call(_Calls.list_jobs(kind, status, limit, cursor))

    async def cancel(self, job_id: str) -> Job:
        """Cancel a job: a queued one at once, a running one at its next step."""
        return await self._call(_Calls.cancel(job_id))

    async def webhook_deliveries(self, job_id: str) -> DeliveryList:
        """Every webhook delivery attempt of a job."""
        return await self._call(_Calls.webhook_deliveries(job_id))

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
        deadline = time.monotonic() + timeout
        line = ProgressLine(progress) if progress is not None else None
        try:
            while True:
                job = await self.get_job(job_id)
                if line is not None:
                    line.update(job)
                if on_update is not None:
                    on_update(job)
                if job.terminal:
                    return job
                if time.monotonic() > deadline:
                    raise TimeoutError(f"job {job_id} still {job.status} after {timeout:.0f} s")
                await asyncio.sleep(poll)
        finally:
            if line is not None:
                line.close()

    async def events(
        self, job_id: str, *, last_event_id: str | None = None, reconnects: int = 5
    ) -> AsyncIterator[JobEvent]:
        """The job's server-sent events as they arrive, until a terminal state.

        A dropped connection is resumed with ``Last-Event-ID``, so no event is missed or repeated; more than
        ``reconnects`` failures in a row without an event raise ``StreamDropped``.
        """
        last = last_event_id
        failures = 0
        path = f"/v1/jobs/{job_id}/events"
        t = self._http.timeout
        timeout = httpx.Timeout(connect=t.connect, read=EVENTS_READ_TIMEOUT, write=t.write, pool=t.pool)
        while True:
            headers = {"Last-Event-ID": last} if last else {}
            problem: Exception
            try:
                async with aconnect_sse(self._http, "GET", path, headers=headers, timeout=timeout) as source:
                    response = source.response
                    if response.status_code >= 400:
                        await response.aread()
                        check_response(response)
                        raise error_for(response)
                    async for sse in source.aiter_sse():
                        event = _event(sse)
                        if event is None:
                            continue
                        last = event.id or last
                        failures = 0
                        yield event
                        if event.job.terminal:
                            return
                problem = StreamDropped(f"the event stream of job {job_id} ended before the job did")
            except (httpx.TransportError, RetryableResponse) as exc:
                problem = exc
            failures += 1
            if failures > reconnects:
                raise StreamDropped(f"the event stream of job {job_id} dropped {failures} times in a row") from problem
            wait = problem.retry_after if isinstance(problem, RetryableResponse) else None
            await asyncio.sleep(wait if wait is not None else reconnect_delay(self.retry, failures))

    # ---- concepts

    async def get_concept(self, ref: str) -> Concept:
        """A concept by name or id."""
        return await self._call(_Calls.get_concept(ref))

    async def list_concepts(self, *, limit: int | None = None, cursor: str | None = None) -> ConceptList:
        """One page of this tenant's concepts, newest first."""
        return await self._call(_Calls.list_concepts(limit, cursor))

    async def delete_concept(self, ref: str) -> None:
        """Delete a concept and its adapter; its name becomes free again."""
        await self._call_none(_Calls.delete_concept(ref))

    # ---- webhooks

    async def webhook_secret(self) -> str:
        """The secret (``whsec_…``) that signs this tenant's webhooks."""
        return (await self._call(_Calls.webhook_secret())).key

    async def rotate_webhook_secret(self) -> str:
        """Replace the webhook signing secret and return the new one."""
        return (await self._call(_Calls.rotate_webhook_secret())).key

    # ---- outputs

    async def download(self, url: str | None) -> bytes:
        """The bytes of a signed URL (an output image, a mask); no API key is sent.

        ``url`` may be an output's ``url`` as it is: None (a file deleted since) raises ``ValueError``.
        """
        url = _signed_url(url)
        # Signed URLs are absolute; a relative one is taken as relative to the API.
        request = httpx.Request(
            "GET", self._http.base_url.join(url), headers={"User-Agent": f"tessera-client/{__version__}"}
        )
        response = await self._send_request(request, True)
        if response.status_code >= 400:
            raise error_for(response)
        return response.content
