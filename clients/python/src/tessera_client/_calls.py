"""The API's calls, described once for both clients: ``Call`` (method, path, body, headers, the model of the
answer) and ``Calls``, one function per endpoint."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from tessera_client.models import (
    Concept,
    ConceptList,
    DeliveryList,
    File,
    Job,
    JobList,
    WebhookSecret,
)

M = TypeVar("M", bound=BaseModel)
Body = Mapping[str, Any] | BaseModel
"""A request body: a mapping as in the API reference, or any pydantic model that dumps to one."""

DEFAULT_TIMEOUT = 30.0


@dataclass(frozen=True)
class Call(Generic[M]):
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


class Calls:
    """The API's calls, shared by both clients."""

    @staticmethod
    def upload_file(data: bytes, filename: str, content_type: str) -> Call[File]:
        return Call("POST", "/v1/files", File, files={"file": (filename, data, content_type)})

    @staticmethod
    def get_file(file_id: str) -> Call[File]:
        return Call("GET", f"/v1/files/{file_id}", File)

    @staticmethod
    def delete_file(file_id: str) -> Call[BaseModel]:
        return Call("DELETE", f"/v1/files/{file_id}", None)

    @staticmethod
    def create_training(body: Body, idempotency_key: str | None) -> Call[Job]:
        return Call("POST", "/v1/trainings", Job, json=_dump(body), headers=_create_headers(idempotency_key))

    @staticmethod
    def create_generation(
        body: Body, idempotency_key: str | None, wait: float | None, timeout: float | None
    ) -> Call[Job]:
        # Prefer: wait holds the answer up to ``wait`` seconds, so the read must be allowed that long and a bit.
        read = None if not wait else max(timeout or DEFAULT_TIMEOUT, wait + 10)
        return Call(
            "POST",
            "/v1/generations",
            Job,
            json=_dump(body),
            headers=_create_headers(idempotency_key, wait),
            timeout=read,
        )

    @staticmethod
    def get_job(job_id: str) -> Call[Job]:
        return Call("GET", f"/v1/jobs/{job_id}", Job)

    @staticmethod
    def list_jobs(kind: str | None, status: str | None, limit: int | None, cursor: str | None) -> Call[JobList]:
        params = {k: v for k, v in {"kind": kind, "status": status, "limit": limit, "cursor": cursor}.items() if v}
        return Call("GET", "/v1/jobs", JobList, params=params)

    @staticmethod
    def cancel(job_id: str) -> Call[Job]:
        # Canceling is idempotent on the server (a second cancel answers the same job), so it may be retried.
        return Call("POST", f"/v1/jobs/{job_id}/cancel", Job, idempotent=True)

    @staticmethod
    def webhook_deliveries(job_id: str) -> Call[DeliveryList]:
        return Call("GET", f"/v1/jobs/{job_id}/webhook_deliveries", DeliveryList)

    @staticmethod
    def get_concept(ref: str) -> Call[Concept]:
        return Call("GET", f"/v1/concepts/{ref}", Concept)

    @staticmethod
    def list_concepts(limit: int | None, cursor: str | None) -> Call[ConceptList]:
        params = {k: v for k, v in {"limit": limit, "cursor": cursor}.items() if v}
        return Call("GET", "/v1/concepts", ConceptList, params=params)

    @staticmethod
    def delete_concept(ref: str) -> Call[BaseModel]:
        return Call("DELETE", f"/v1/concepts/{ref}", None)

    @staticmethod
    def webhook_secret() -> Call[WebhookSecret]:
        return Call("GET", "/v1/webhooks/secret", WebhookSecret)

    @staticmethod
    def rotate_webhook_secret() -> Call[WebhookSecret]:
        return Call("POST", "/v1/webhooks/secret/rotate", WebhookSecret)
