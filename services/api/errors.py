"""RFC 9457 problem details: the only place that knows which error is which HTTP status."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError as BrokerError
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from core import errors as e

logger = logging.getLogger(__name__)

PROBLEM = "application/problem+json"


class FieldError(BaseModel):
    """One offending field of a ``422``."""

    field: str = Field(description="Where: a dotted path with [i] for list items (mask_prompts[0].box), or a header.")
    message: str = Field(description="What is wrong with it, with the value received where it helps.")
    type: str | None = Field(None, description="The validation rule that failed (pydantic's error type).")


class Problem(BaseModel):
    """RFC 9457 problem details, with a stable machine-readable ``code``."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "type": "http://127.0.0.1:8000/problems#unknown_concept",
                    "title": "Invalid request",
                    "status": 422,
                    "detail": "prompt: concept <corgi> does not exist",
                    "code": "unknown_concept",
                    "errors": [{"field": "prompt", "message": "prompt: concept <corgi> does not exist"}],
                }
            ]
        }
    )

    type: str = Field(description="A URL of this problem type's documentation: {API base}/problems#{code}.")
    title: str = Field(description="The HTTP status in words.")
    status: int = Field(description="The HTTP status code, repeated.")
    detail: str = Field(description="What went wrong with this request, for a person.")
    code: str = Field(description="Stable machine-readable name of the problem (docs/problems.md).")
    errors: list[FieldError] | None = Field(None, description="The offending fields (422 only).")


@dataclass(frozen=True)
class ProblemType:
    """A documented ``code``: its HTTP status and a one-line summary (docs/problems.md says more)."""

    status: int
    summary: str


# Every code a problem+json body can carry. The /problems page, the OpenAPI examples and the test that keeps
# docs/problems.md complete read this table.
PROBLEM_TYPES: dict[str, ProblemType] = {
    "invalid_body": ProblemType(400, "The body could not be parsed at all."),
    "missing_api_key": ProblemType(401, "No Authorization: Bearer header."),
    "invalid_api_key": ProblemType(401, "The bearer key is not one this service knows (or it was revoked)."),
    "forbidden": ProblemType(403, "A signed URL that is expired, tampered with or not signed by this service."),
    "not_found": ProblemType(404, "No such id (or route) for this tenant."),
    "object_not_found": ProblemType(404, "A signed URL whose object is gone."),
    "method_not_allowed": ProblemType(405, "The route exists but not with this method."),
    "concept_name_taken": ProblemType(409, "A concept of this tenant already has that name."),
    "idempotency_request_in_flight": ProblemType(409, "The first request with this Idempotency-Key is running."),
    "invalid_transition": ProblemType(409, "A job state change the state machine forbids."),
    "file_too_large": ProblemType(413, "The upload has more bytes than the limit."),
    "unsupported_media_type": ProblemType(415, "The upload is not a PNG, JPEG or WebP image."),
    "validation_error": ProblemType(422, "A field breaks the schema; errors lists each one."),
    "invalid_request": ProblemType(422, "A field breaks a rule the schema cannot express."),
    "invalid_image": ProblemType(422, "The upload is truncated, corrupt or empty."),
    "image_too_large": ProblemType(422, "The image has more pixels than the limits allow."),
    "unknown_concept": ProblemType(422, "The prompt or concepts name a concept that does not exist or is not ready."),
    "unknown_file": ProblemType(422, "A file id in the body does not exist for this tenant."),
    "invalid_mask": ProblemType(422, "A mask file does not fit its image."),
    "neighbour_images_expired": ProblemType(422, "A composites neighbour's training images are no longer stored."),
    "webhook_url_forbidden": ProblemType(422, "The webhook URL is not https or resolves to a private address."),
    "invalid_idempotency_key": ProblemType(422, "The Idempotency-Key is empty, too long or not printable."),
    "idempotency_key_reused": ProblemType(422, "This Idempotency-Key came with a different body before."),
    "quota_exceeded": ProblemType(429, "Too many queued and running jobs for this tenant."),
    "rate_limited": ProblemType(429, "Too many requests per minute for this API key."),
    "internal_error": ProblemType(500, "An unexpected error; the server log has it under the request id."),
    "redis_unavailable": ProblemType(503, "The job store (Redis) does not answer."),
    "queue_unavailable": ProblemType(503, "The job queue refused the job's message."),
    "object_store_error": ProblemType(503, "The object store failed."),
    "storage_unavailable": ProblemType(503, "The object store failed after retries."),
    "dependency_unavailable": ProblemType(503, "A dependency does not answer."),
}

_DESCRIPTIONS: dict[int, str] = {
    400: "The body could not be parsed.",
    401: "Missing or unknown API key.",
    403: "A signed URL that is expired or tampered with.",
    404: "No such object for this tenant.",
    409: "Conflict: a concept name taken, or the same Idempotency-Key in flight.",
    413: "The upload is larger than the limit.",
    415: "The upload is not a PNG, JPEG or WebP image.",
    422: "A field breaks a rule; `errors` names each one.",
    429: "A quota or rate limit; see Retry-After.",
    500: "An unexpected error (no details are leaked).",
    503: "A dependency (Redis, the object store, the queue) is unavailable; see Retry-After.",
}

PROBLEM_SCHEMA_REF = "#/components/schemas/Problem"


def responses(
    *statuses: int, codes: Iterable[str] = (), descriptions: Mapping[int, str] | None = None
) -> dict[int | str, dict[str, Any]]:
    """The problem+json responses an operation can give, for a route's ``responses=``.

    Each status lists its problem codes as examples: of those in ``codes`` when ``codes`` names any of that status,
    else all of them. ``descriptions`` replaces the generic description of a status for this operation.
    ``PROBLEM_SCHEMA_REF`` is added to the document's components by ``services.api.openapi``; the schema is given by
    reference so FastAPI does not also list it as application/json.
    """
    chosen = set(codes)
    unknown = chosen - set(PROBLEM_TYPES)
    if unknown:
        raise ValueError(f"undocumented problem codes {sorted(unknown)}: add them to PROBLEM_TYPES")
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        of_status = [code for code, kind in PROBLEM_TYPES.items() if kind.status == status]
        named = [code for code in of_status if code in chosen] or of_status
        examples = {
            code: {
                "summary": PROBLEM_TYPES[code].summary,
                "value": _example(status, code, PROBLEM_TYPES[code].summary),
            }
            for code in named
        }
        out[status] = {
            "description": (descriptions or {}).get(status, _DESCRIPTIONS[status]),
            "content": {PROBLEM: {"schema": {"$ref": PROBLEM_SCHEMA_REF}, "examples": examples}},
        }
    return out


def _example(status: int, code: str, summary: str) -> dict[str, Any]:
    return {
        "type": f"http://127.0.0.1:8000/problems#{code}",
        "title": _titles(status),
        "status": status,
        "detail": summary,
        "code": code,
    }


# The statuses every authenticated route can give: no key (401), over the rate limit (429), a bug (500),
# Redis down (503).
AUTHENTICATED = (401, 429, 500, 503)


# Seconds a client is told to wait when Redis or the queue does not answer (a restart, a failover).
DEPENDENCY_RETRY_AFTER = 5

_STATUS: list[tuple[type[e.ServiceError], int]] = [
    (e.UnsupportedMediaError, 415),
    (e.FileTooLargeError, 413),
    (e.InvalidRequestError, 422),
    (e.NotFoundError, 404),
    (e.ObjectNotFoundError, 404),
    (e.ConflictError, 409),
    (e.AuthError, 401),
    (e.ForbiddenError, 403),
    (e.LimitExceededError, 429),
    (e.ObjectStoreError, 503),
    (e.DependencyUnavailableError, 503),
]


def status_of(exc: e.ServiceError) -> int:
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def problem_type_url(base_url: str, code: str) -> str:
    """The ``type`` of a problem: this API's own page of problem types (``GET /problems``), at the code's anchor."""
    return f"{base_url.rstrip('/')}/problems#{code}"


def problem(
    request: Request,
    status: int,
    code: str,
    title: str,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """A problem+json response whose ``type`` points at this API's documentation of ``code``."""
    body = {"type": problem_type_url(str(request.base_url), code), "title": title, "status": status, "detail": detail}
    body["code"] = code
    body.update(extra)
    headers = dict(headers or {})
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def _titles(status: int) -> str:
    return {
        400: "Bad request",
        401: "Unauthorized",
        403: "Forbidden",
        429: "Too many requests",
        404: "Not found",
        409: "Conflict",
        413: "Payload too large",
        415: "Unsupported media type",
        422: "Invalid request",
        503: "Service unavailable",
    }.get(status, "Internal server error")


def _field_path(loc: tuple[int | str, ...] | list[int | str]) -> str:
    """``("body", "mask_prompts", 0, "box")`` → ``mask_prompts[0].box``: the same notation core errors use."""
    path = ""
    for part in loc:
        if part in ("body", "query", "path", "header") and not path:
            continue
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into problem+json."""

    @app.exception_handler(e.ServiceError)
    async def _service_error(request: Request, exc: e.ServiceError) -> JSONResponse:
        status = status_of(exc)
        if status >= 500:
            logger.error("service error: %s", exc.message)
        extra: dict[str, Any] = {}
        headers: dict[str, str] = {}
        if isinstance(exc, e.InvalidRequestError) and exc.field:
            extra["errors"] = [{"field": exc.field, "message": exc.message}]
        if isinstance(exc, e.LimitExceededError):
            headers["Retry-After"] = str(exc.retry_after)
        if isinstance(exc, e.DependencyUnavailableError):
            headers["Retry-After"] = str(DEPENDENCY_RETRY_AFTER)
        return problem(request, status, exc.code, _titles(status), exc.message, headers=headers, **extra)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        fields = []
        for err in exc.errors():
            path = _field_path(err.get("loc", ()))
            received = err.get("input")
            message = err.get("msg", "invalid")
            if received is not None and not isinstance(received, dict | list):
                message = f"{message} (received {received!r})"
            fields.append({"field": path, "message": message, "type": err.get("type")})
        detail = "; ".join(f"{f['field'] or 'body'}: {f['message']}" for f in fields)
        return problem(request, 422, "validation_error", "Invalid request", detail, errors=fields)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # 400: a body FastAPI could not parse at all (e.g. JSON nested deeper than the parser allows).
        codes = {400: "invalid_body", 404: "not_found", 405: "method_not_allowed", 403: "forbidden"}
        code = codes.get(exc.status_code, "http_error")
        return problem(request, exc.status_code, code, str(exc.detail), str(exc.detail))

    # Redis down, restarting (loading its data) or timing out, or the queue's broker refusing a message outside a
    # job submission (which fails its job with queue_unavailable itself, core.submissions): the request may be
    # retried as it is, so the same 503 with Retry-After that DependencyUnavailableError gets, not a 500.
    @app.exception_handler(redis.exceptions.ConnectionError)
    @app.exception_handler(redis.exceptions.TimeoutError)
    @app.exception_handler(BrokerError)
    async def _dependency_down(request: Request, exc: Exception) -> JSONResponse:
        which = "queue" if isinstance(exc, BrokerError) else "redis"
        store = "job queue" if which == "queue" else "job store (Redis)"
        unavailable = e.DependencyUnavailableError(
            f"the {store} does not answer; retry shortly", code=f"{which}_unavailable"
        )
        unavailable.__cause__ = exc
        return await _service_error(request, unavailable)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Never leak a stack trace to the client; the log has it.
        logger.exception("unhandled error", exc_info=exc)
        return problem(request, 500, "internal_error", "Internal server error", "an unexpected error occurred")
