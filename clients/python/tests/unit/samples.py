"""Bodies as the API sends them (shapes from its reference), for tests that run without the service."""

from __future__ import annotations

import json
from typing import Any

CREATED = "2026-01-01T00:00:00Z"


def job(
    job_id: str = "job_1",
    *,
    kind: str = "generation",
    status: str = "queued",
    progress: dict[str, Any] | None = None,
    output: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A Job body."""
    return {
        "id": job_id,
        "object": "job",
        "kind": kind,
        "status": status,
        "created_at": CREATED,
        "started_at": None,
        "completed_at": None,
        "queue_position": None,
        "progress": progress,
        "input": {},
        "output": output,
        "error": None,
        "metrics": {"queue_seconds": None, "run_seconds": None, "stages": {}},
        "urls": {
            "get": f"/v1/jobs/{job_id}",
            "cancel": f"/v1/jobs/{job_id}/cancel",
            "events": f"/v1/jobs/{job_id}/events",
        },
        "metadata": None,
        **extra,
    }


def job_bytes(*args: Any, **kwargs: Any) -> bytes:
    return json.dumps(job(*args, **kwargs)).encode()


def file_body(file_id: str = "file_1") -> dict[str, Any]:
    return {
        "id": file_id,
        "object": "file",
        "content_type": "image/png",
        "bytes": 10,
        "width": 8,
        "height": 8,
        "sha256": "0" * 64,
        "created_at": CREATED,
    }


def problem(status: int, code: str, detail: str = "refused", **extra: Any) -> bytes:
    body = {"type": f"about:blank#{code}", "title": "t", "status": status, "detail": detail, "code": code, **extra}
    return json.dumps(body).encode()
