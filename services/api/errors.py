"""RFC 9457 problem details: the only place that knows which error is which HTTP status."""

from __future__ import annotations

import logging
from typing import Any

import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError as BrokerError
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from core import errors as e

logger = logging.getLogger(__name__)

PROBLEM = "application/problem+json"


class FieldError(BaseModel):
    field: str
    message: str
    type: str | None = None


class Problem(BaseModel):
    """RFC 9457 problem details, with a stable machine-readable ``code``."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    errors: list[FieldError] | None = None


def _problem_response(description: str) -> dict[str, Any]:
    return {"description": description, "model": Problem, "content": {PROBLEM: {}}}


# Documented on every operation, so the OpenAPI document describes every answer the API can give.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: _problem_response("Missing or unknown API key."),
    403: _problem_response("A signed URL that is expired or tampered with."),
    404: _problem_response("No such object for this tenant."),
    409: _problem_response("Conflict: a concept name taken, or the same Idempotency-Key in flight."),
    413: _problem_response("The upload is larger than the limit."),
    415: _problem_response("The upload is not a PNG, JPEG or WebP image."),
    422: _problem_response("A field breaks a rule; `errors` names each one."),
    429: _problem_response("A quota or rate limit; see Retry-After."),
    500: _problem_response("An unexpected error (no details are leaked)."),
    503: _problem_response("A dependency (Redis, the object store, the queue) is unavailable."),
}

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


def problem(
    status: int, code: str, title: str, detail: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    body = {"type": f"https://tessera.dev/problems/{code}", "title": title, "status": status, "detail": detail}
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
    async def _service_error(_: Request, exc: e.ServiceError) -> JSONResponse:
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
        return problem(status, exc.code, _titles(status), exc.message, headers=headers, **extra)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        fields = []
        for err in exc.errors():
            path = _field_path(err.get("loc", ()))
            received = err.get("input")
            message = err.get("msg", "invalid")
            if received is not None and not isinstance(received, dict | list):
                message = f"{message} (received {received!r})"
            fields.append({"field": path, "message": message, "type": err.get("type")})
        detail = "; ".join(f"{f['field'] or 'body'}: {f['message']}" for f in fields)
        return problem(422, "validation_error", "Invalid request", detail, errors=fields)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        # 400: a body FastAPI could not parse at all (e.g. JSON nested deeper than the parser allows).
        codes = {400: "invalid_body", 404: "not_found", 405: "method_not_allowed", 403: "forbidden"}
        code = codes.get(exc.status_code, "http_error")
        return problem(exc.status_code, code, str(exc.detail), str(exc.detail))

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
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        # Never leak a stack trace to the client; the log has it.
        logger.exception("unhandled error", exc_info=exc)
        return problem(500, "internal_error", "Internal server error", "an unexpected error occurred")
