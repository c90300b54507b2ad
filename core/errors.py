"""One exception tree for the whole project; only ``services/api`` maps it to HTTP.

```
ServiceError
├── InvalidRequestError        a request field breaks a rule (carries ``field``)
│   ├── InvalidImageError      not a decodable / allowed image
│   ├── ImageTooLargeError     pixel limits
│   ├── FileTooLargeError      byte limits
│   ├── UnsupportedMediaError  not PNG/JPEG/WebP
│   └── UnknownConceptError    a prompt names a concept that is not ready
├── NotFoundError              an id that does not exist for this tenant
├── ConflictError
│   ├── InvalidTransitionError a job state change that the state machine forbids
│   ├── ConceptNameTakenError
│   └── IdempotencyConflictError a request with the same Idempotency-Key is still being processed
├── AuthError                  missing or unknown API key
├── LimitExceededError         a quota or rate limit (carries ``retry_after`` seconds)
│   ├── QuotaExceededError     too many queued+running jobs
│   └── RateLimitedError       too many requests per minute
├── ForbiddenError             a signed URL that is expired or tampered with
├── DependencyUnavailableError Redis or the queue did not answer (retryable infrastructure)
├── ObjectStoreError           the object store failed (retryable infrastructure)
│   └── ObjectNotFoundError
├── ModelLoadError             weights missing or malformed
├── PipelineError              an ML pipeline failed on valid input
└── JobCanceledError           cooperative cancellation reached a step boundary
```
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base of every error the project raises on purpose.

    ``code`` is the stable machine-readable name clients see in problem+json bodies.
    """

    code: str = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidRequestError(ServiceError):
    """A request field breaks a rule. ``field`` names it (dotted path), ``value`` is what was received."""

    code = "invalid_request"

    def __init__(self, message: str, *, field: str | None = None, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.field = field


class InvalidImageError(InvalidRequestError):
    code = "invalid_image"


class ImageTooLargeError(InvalidRequestError):
    code = "image_too_large"


class FileTooLargeError(InvalidRequestError):
    code = "file_too_large"


class UnsupportedMediaError(InvalidRequestError):
    code = "unsupported_media_type"


class UnknownConceptError(InvalidRequestError):
    code = "unknown_concept"


class NotFoundError(ServiceError):
    code = "not_found"


class ConflictError(ServiceError):
    code = "conflict"


class InvalidTransitionError(ConflictError):
    code = "invalid_transition"


class ConceptNameTakenError(ConflictError):
    code = "concept_name_taken"


class IdempotencyConflictError(ConflictError):
    code = "idempotency_request_in_flight"


class AuthError(ServiceError):
    code = "unauthorized"


class LimitExceededError(ServiceError):
    code = "limit_exceeded"

    def __init__(self, message: str, *, retry_after: int, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class QuotaExceededError(LimitExceededError):
    code = "quota_exceeded"


class RateLimitedError(LimitExceededError):
    code = "rate_limited"


class ForbiddenError(ServiceError):
    code = "forbidden"


class DependencyUnavailableError(ServiceError):
    """Redis or the queue did not answer: retry the same request shortly."""

    code = "dependency_unavailable"


class ObjectStoreError(ServiceError):
    code = "object_store_error"


class ObjectNotFoundError(ObjectStoreError):
    code = "object_not_found"


class ModelLoadError(ServiceError):
    code = "model_load_error"


class PipelineError(ServiceError):
    code = "pipeline_error"


class JobCanceledError(ServiceError):
    code = "canceled"
