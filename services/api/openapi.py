"""The OpenAPI document: FastAPI's, plus the problem+json schema its error responses refer to."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from services.api.errors import Problem

DESCRIPTION = """\
Multi-concept image personalization: upload a few images of each concept, train it (an ED-LoRA training job),
then generate scenes that combine trained concepts (a generation job). Jobs run on workers; follow them by polling
`GET /v1/jobs/{id}`, by server-sent events or by webhook.

Authenticate with `Authorization: Bearer <api key>`. Every error is `application/problem+json` with a stable
`code`; `GET /problems` lists them. The full reference is `docs/api.md` in the repository.
"""


def install(app: FastAPI) -> None:
    """Make ``app.openapi()`` build (once) the document with the ``Problem`` schema in its components."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = get_openapi(
            title=app.title,
            version=app.version,
            summary=app.summary,
            description=DESCRIPTION,
            routes=app.routes,
            tags=TAGS,
        )
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        _drop_default_validation_errors(document)
        problem = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
        # Nested models come back under $defs; OpenAPI keeps every schema in components.
        schemas.update(problem.pop("$defs", {}))
        schemas["Problem"] = problem
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]


TAGS: list[dict[str, str]] = [
    {"name": "files", "description": "Training images, masks and style or layout references."},
    {"name": "trainings", "description": "Teach the service a concept: a training job."},
    {"name": "generations", "description": "Images that combine trained concepts: a generation job."},
    {"name": "jobs", "description": "Read, list, cancel and follow jobs of either kind."},
    {"name": "concepts", "description": "What trainings produced."},
    {"name": "webhooks", "description": "The secret that signs this tenant's webhooks."},
    {"name": "objects", "description": "Bytes behind the signed URLs of the local object store."},
    {"name": "operations", "description": "Liveness and readiness probes."},
]


def _drop_default_validation_errors(document: dict[str, Any]) -> None:
    """Remove FastAPI's automatic ``422 HTTPValidationError`` responses.

    FastAPI adds one to every operation with a parameter, in a shape this API never sends (its 422 is problem+json,
    declared where a 422 can happen). Where a route declared none, no parameter can fail validation (a path id is
    any string), so the automatic one would only promise an error that does not exist.
    """
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            answer = operation.get("responses", {}).get("422", {})
            schema = answer.get("content", {}).get("application/json", {}).get("schema", {})
            if schema.get("$ref", "").endswith("/HTTPValidationError"):
                del operation["responses"]["422"]
    schemas = document.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
