"""A small HTTP client for the Tessera API, used by the demo and the integration tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

TERMINAL = {"succeeded", "failed", "canceled"}


class TesseraError(Exception):
    """A problem+json answer; ``code`` is the API's stable error code."""

    def __init__(self, status: int, code: str, detail: str, body: dict[str, Any]) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status, self.code, self.detail, self.body = status, code, detail, body


class TesseraClient:
    def __init__(self, url: str, api_key: str, *, timeout: float = 30.0) -> None:
        self._http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {api_key}"}, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> TesseraClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _json(self, response: httpx.Response) -> dict[str, Any]:
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {"code": "http_error", "detail": response.text}
            raise TesseraError(response.status_code, body.get("code", "http_error"), body.get("detail", ""), body)
        data: dict[str, Any] = response.json()
        return data

    def upload_file(self, data: bytes, filename: str = "image.png", content_type: str = "image/png") -> dict[str, Any]:
        return self._json(self._http.post("/v1/files", files={"file": (filename, data, content_type)}))

    def get_file(self, file_id: str) -> dict[str, Any]:
        return self._json(self._http.get(f"/v1/files/{file_id}"))

    def create_training(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._json(self._http.post("/v1/trainings", json=body))

    def create_generation(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._json(self._http.post("/v1/generations", json=body))

    def get_job(self, job_id: str) -> dict[str, Any]:
        return self._json(self._http.get(f"/v1/jobs/{job_id}"))

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._json(self._http.post(f"/v1/jobs/{job_id}/cancel"))

    def get_concept(self, ref: str) -> dict[str, Any]:
        return self._json(self._http.get(f"/v1/concepts/{ref}"))

    def wait(
        self,
        job_id: str,
        *,
        timeout: float = 600.0,
        poll: float = 0.25,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll a job until it is terminal; ``on_update`` sees every state polled."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.get_job(job_id)
            if on_update is not None:
                on_update(job)
            if job["status"] in TERMINAL:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout:.0f} s")
            time.sleep(poll)

    def download(self, url: str) -> bytes:
        """Fetch a signed output URL (no API key needed)."""
        response = httpx.get(url, timeout=60)
        response.raise_for_status()
        return response.content
