"""The Python client of the Tessera API, sync (``TesseraClient``) and async (``AsyncTesseraClient``).

Errors are raised as typed exceptions built from the problem+json ``code`` (``QuotaExceeded``,
``UnknownConcept``, …). ``wait`` polls with an optional progress bar and honours ``Retry-After``;
``events`` follows a job's server-sent events and resumes with ``Last-Event-ID`` after a dropped
connection, so no state change is missed or repeated.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx

TERMINAL = {"succeeded", "failed", "canceled"}
Job = dict[str, Any]


class TesseraError(Exception):
    """A problem+json answer; ``code`` is the API's stable error code."""

    def __init__(self, status: int, code: str, detail: str, body: dict[str, Any], retry_after: float | None = None):
        super().__init__(f"{status} {code}: {detail}")
        self.status, self.code, self.detail, self.body, self.retry_after = status, code, detail, body, retry_after


class AuthenticationError(TesseraError): ...


class NotFound(TesseraError): ...


class InvalidRequest(TesseraError): ...


class UnknownConcept(InvalidRequest): ...


class InvalidImage(InvalidRequest): ...


class Conflict(TesseraError): ...


class RateLimited(TesseraError): ...


class QuotaExceeded(RateLimited): ...


class ServerError(TesseraError): ...


_BY_CODE: dict[str, type[TesseraError]] = {
    "unknown_concept": UnknownConcept,
    "invalid_image": InvalidImage,
    "image_too_large": InvalidImage,
    "quota_exceeded": QuotaExceeded,
    "rate_limited": RateLimited,
}
_BY_STATUS: dict[int, type[TesseraError]] = {401: AuthenticationError, 404: NotFound, 409: Conflict, 429: RateLimited}


def raise_for_problem(response: httpx.Response) -> None:
    """Raise the typed error of a 4xx/5xx answer."""
    if response.status_code < 400:
        return
    try:
        body = response.json()
    except ValueError:
        body = {"code": "http_error", "detail": response.text[:500]}
    code = str(body.get("code", "http_error"))
    cls = _BY_CODE.get(code) or _BY_STATUS.get(response.status_code)
    if cls is None:
        cls = ServerError if response.status_code >= 500 else InvalidRequest
    retry_after = response.headers.get("retry-after")
    raise cls(
        response.status_code, code, str(body.get("detail", "")), body, float(retry_after) if retry_after else None
    )


def _create_headers(idempotency_key: str | None, wait: int | None) -> dict[str, str]:
    headers = {}
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    if wait:
        headers["Prefer"] = f"wait={wait}"
    return headers


def parse_sse(lines: Iterator[str]) -> Iterator[tuple[str | None, dict[str, Any]]]:
    """(event id, Job) for every ``data`` event in a stream of SSE lines; comments are skipped."""
    event_id: str | None = None
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield event_id, json.loads("\n".join(data))
            event_id, data = None, []
        elif line.startswith(":"):
            continue
        elif line.startswith("id:"):
            event_id = line[3:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


class _Progress:
    """A tqdm bar driven by job states (only when asked for)."""

    def __init__(self, label: str | None) -> None:
        self._bar = None
        if label is not None:
            from tqdm import tqdm

            self._bar = tqdm(total=100, desc=label, unit="%", bar_format="{desc:<28} {bar} {n:3.0f}% {postfix}")

    def update(self, job: Job) -> None:
        if self._bar is None:
            return
        progress = job.get("progress") or {}
        if job["status"] == "running":
            self._bar.n = round(100 * progress.get("fraction", 0.0))
        elif job["status"] == "succeeded":
            self._bar.n = 100
        position = job.get("queue_position")
        self._bar.set_postfix_str(
            f"{job['status']} {progress.get('stage', '')}" + (f" (#{position} in queue)" if position else "")
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class TesseraClient:
    """Synchronous client. ``url`` is the API's base address; ``api_key`` a tenant's key."""

    def __init__(self, url: str, api_key: str, *, timeout: float = 30.0) -> None:
        self._http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {api_key}"}, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> TesseraClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self._http.request(method, path, **kwargs)
        raise_for_problem(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        data: dict[str, Any] = self._request(method, path, **kwargs).json()
        return data

    def upload_file(self, data: bytes, filename: str = "image.png", content_type: str = "image/png") -> dict[str, Any]:
        return self._json("POST", "/v1/files", files={"file": (filename, data, content_type)})

    def get_file(self, file_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/files/{file_id}")

    def create_training(self, body: dict[str, Any], *, idempotency_key: str | None = None) -> Job:
        return self._json("POST", "/v1/trainings", json=body, headers=_create_headers(idempotency_key, None))

    def create_generation(
        self, body: dict[str, Any], *, idempotency_key: str | None = None, wait: int | None = None
    ) -> Job:
        """Create a generation; ``wait`` (≤ 60 s) holds the answer until the job is done, if it gets done."""
        timeout = self._http.timeout.read or 30.0
        return self._json(
            "POST",
            "/v1/generations",
            json=body,
            headers=_create_headers(idempotency_key, wait),
            timeout=max(timeout, (wait or 0) + 10),
        )

    def get_job(self, job_id: str) -> Job:
        return self._json("GET", f"/v1/jobs/{job_id}")

    def list_jobs(self, **params: Any) -> dict[str, Any]:
        return self._json("GET", "/v1/jobs", params=params)

    def cancel(self, job_id: str) -> Job:
        return self._json("POST", f"/v1/jobs/{job_id}/cancel")

    def get_concept(self, ref: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/concepts/{ref}")

    def delete_concept(self, ref: str) -> None:
        self._request("DELETE", f"/v1/concepts/{ref}")

    def webhook_secret(self) -> str:
        return str(self._json("GET", "/v1/webhooks/secret")["key"])

    def wait(
        self,
        job_id: str,
        *,
        timeout: float = 600.0,
        poll: float = 0.25,
        on_update: Callable[[Job], None] | None = None,
        progress: str | None = None,
    ) -> Job:
        """Poll a job until it is terminal; ``progress`` names a progress bar to draw."""
        deadline = time.monotonic() + timeout
        bar = _Progress(progress)
        try:
            while True:
                try:
                    job = self.get_job(job_id)
                except RateLimited as exc:
                    time.sleep(exc.retry_after or 1.0)
                    continue
                bar.update(job)
                if on_update is not None:
                    on_update(job)
                if job["status"] in TERMINAL:
                    return job
                if time.monotonic() > deadline:
                    raise TimeoutError(f"job {job_id} still {job['status']} after {timeout:.0f} s")
                time.sleep(poll)
        finally:
            bar.close()

    def events(self, job_id: str, *, last_event_id: str | None = None, reconnects: int = 5) -> Iterator[Job]:
        """Every state of a job from its event stream, until a terminal one; resumes after disconnects."""
        last = last_event_id
        for _ in range(reconnects + 1):
            headers = {"Last-Event-ID": last} if last else {}
            try:
                with self._http.stream(
                    "GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=httpx.Timeout(30.0, read=None)
                ) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise_for_problem(response)
                    for event_id, job in parse_sse(response.iter_lines()):
                        last = event_id or last
                        yield job
                        if job["status"] in TERMINAL:
                            return
            except httpx.TransportError:
                continue
        raise TimeoutError(f"the event stream of job {job_id} kept dropping")

    def download(self, url: str) -> bytes:
        """Fetch a signed output URL (no API key needed)."""
        response = httpx.get(url, timeout=60)
        response.raise_for_status()
        return response.content


class AsyncTesseraClient:
    """Asynchronous client with the same calls as ``TesseraClient``."""

    def __init__(self, url: str, api_key: str, *, timeout: float = 30.0) -> None:
        self._http = httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {api_key}"}, timeout=timeout)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncTesseraClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = await self._http.request(method, path, **kwargs)
        raise_for_problem(response)
        data: dict[str, Any] = response.json()
        return data

    async def upload_file(self, data: bytes, filename: str = "image.png", content_type: str = "image/png") -> Job:
        return await self._json("POST", "/v1/files", files={"file": (filename, data, content_type)})

    async def create_training(self, body: dict[str, Any], *, idempotency_key: str | None = None) -> Job:
        return await self._json("POST", "/v1/trainings", json=body, headers=_create_headers(idempotency_key, None))

    async def create_generation(
        self, body: dict[str, Any], *, idempotency_key: str | None = None, wait: int | None = None
    ) -> Job:
        return await self._json(
            "POST",
            "/v1/generations",
            json=body,
            headers=_create_headers(idempotency_key, wait),
            timeout=max(30.0, (wait or 0) + 10),
        )

    async def get_job(self, job_id: str) -> Job:
        return await self._json("GET", f"/v1/jobs/{job_id}")

    async def cancel(self, job_id: str) -> Job:
        return await self._json("POST", f"/v1/jobs/{job_id}/cancel")

    async def wait(self, job_id: str, *, timeout: float = 600.0, poll: float = 0.25) -> Job:
        deadline = time.monotonic() + timeout
        while True:
            try:
                job = await self.get_job(job_id)
            except RateLimited as exc:
                await asyncio.sleep(exc.retry_after or 1.0)
                continue
            if job["status"] in TERMINAL:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout:.0f} s")
            await asyncio.sleep(poll)

    async def events(self, job_id: str, *, last_event_id: str | None = None) -> AsyncIterator[Job]:
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        async with self._http.stream(
            "GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=httpx.Timeout(30.0, read=None)
        ) as response:
            if response.status_code >= 400:
                await response.aread()
                raise_for_problem(response)
            lines = [line async for line in response.aiter_lines()]
        for _, job in parse_sse(iter(lines)):
            yield job

    async def download(self, url: str) -> bytes:
        async with httpx.AsyncClient(timeout=60) as http:
            response = await http.get(url)
            response.raise_for_status()
            return response.content
