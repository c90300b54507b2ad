"""Typed errors, one class per problem ``code`` family, so callers catch what they can handle.

```
TesseraError                   any problem+json answer (status, code, detail, problem)
├── InvalidRequest             400/422: a field breaks a rule (problem.errors names each)
│   ├── InvalidImage           the upload is not a usable image (corrupt, too large, not PNG/JPEG/WebP)
│   └── UnknownConcept         a prompt names a concept that is not ready
├── AuthenticationError        401: missing or unknown API key
├── PermissionDenied           403: a signed URL that expired or was tampered with
├── NotFound                   404
├── Conflict                   409
│   ├── ConceptNameTaken
│   └── IdempotencyInFlight    the same Idempotency-Key is still being processed
├── RateLimited                429 (retry_after seconds)
│   └── QuotaExceeded          too many queued and running jobs
└── ServerError                5xx
    └── ServiceUnavailable     503: Redis, the queue or the object store did not answer
StreamDropped                  an event stream kept dropping and could not be resumed
```

Network failures (the API unreachable) are httpx's own ``httpx.TransportError`` subclasses.
"""

from __future__ import annotations

import email.utils
import time

import httpx
from pydantic import ValidationError

from tessera_client.models import Problem


class TesseraError(Exception):
    """A problem+json answer. ``code`` is the API's stable error code, ``problem`` the whole body."""

    def __init__(
        self, status: int, code: str, detail: str, problem: Problem, *, retry_after: float | None = None
    ) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.problem = problem
        self.retry_after = retry_after


class InvalidRequest(TesseraError):
    """A request field breaks a rule; ``problem.errors`` names each field."""


class InvalidImage(InvalidRequest):
    """The uploaded file is not a usable image."""


class UnknownConcept(InvalidRequest):
    """A prompt or concept list names a concept that does not exist or is not ready."""


class AuthenticationError(TesseraError):
    """The API key is missing or unknown."""


class PermissionDenied(TesseraError):
    """A signed URL expired or was tampered with."""


class NotFound(TesseraError):
    """No such object for this tenant."""


class Conflict(TesseraError):
    """The request conflicts with the current state."""


class ConceptNameTaken(Conflict):
    """Another concept of this tenant has the name."""


class IdempotencyInFlight(Conflict):
    """A request with the same Idempotency-Key is still being processed."""


class RateLimited(TesseraError):
    """A rate limit; ``retry_after`` says when to try again."""


class QuotaExceeded(RateLimited):
    """Too many queued and running jobs for this tenant."""


class ServerError(TesseraError):
    """The server failed (5xx)."""


class ServiceUnavailable(ServerError):
    """A dependency of the service (Redis, the queue, the object store) did not answer; retry shortly."""


class StreamDropped(Exception):
    """A job's event stream dropped more often in a row than the client was told to reconnect."""


_BY_CODE: dict[str, type[TesseraError]] = {
    "invalid_image": InvalidImage,
    "image_too_large": InvalidImage,
    "file_too_large": InvalidImage,
    "unsupported_media_type": InvalidImage,
    "unknown_concept": UnknownConcept,
    "concept_name_taken": ConceptNameTaken,
    "idempotency_request_in_flight": IdempotencyInFlight,
    "quota_exceeded": QuotaExceeded,
    "rate_limited": RateLimited,
}
_BY_STATUS: dict[int, type[TesseraError]] = {
    400: InvalidRequest,
    401: AuthenticationError,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    413: InvalidImage,
    415: InvalidImage,
    422: InvalidRequest,
    429: RateLimited,
    503: ServiceUnavailable,
}


def retry_after_seconds(response: httpx.Response) -> float | None:
    """The response's ``Retry-After`` in seconds (delta-seconds or an HTTP date), or None."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def problem_of(response: httpx.Response) -> Problem:
    """The problem+json body of an error answer; a body that is not one becomes a problem with code ``http_error``."""
    try:
        return Problem.model_validate_json(response.content)
    except ValidationError:
        return Problem(status=response.status_code, code="http_error", detail=response.text[:500])


def error_for(response: httpx.Response) -> TesseraError:
    """The typed error of a 4xx/5xx answer (its body must have been read)."""
    problem = problem_of(response)
    cls = _BY_CODE.get(problem.code) or _BY_STATUS.get(response.status_code)
    if cls is None:
        cls = ServerError if response.status_code >= 500 else TesseraError
    return cls(response.status_code, problem.code, problem.detail, problem, retry_after=retry_after_seconds(response))


def raise_for_problem(response: httpx.Response) -> None:
    """Raise the typed error of a 4xx/5xx answer; do nothing for any other."""
    if response.status_code >= 400:
        raise error_for(response)
