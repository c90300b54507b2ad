"""/healthz and /readyz."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from services.api.deps import State

router = APIRouter(tags=["operations"])


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ok", "unavailable"]
    down: dict[str, str] | None = Field(
        None, description="What does not answer (redis, object_store) → the error type it raised."
    )


@router.get("/healthz", response_model=Health, operation_id="get_health")
def healthz() -> Health:
    """200 while the process serves."""
    return Health()


@router.get(
    "/readyz",
    response_model=Readiness,
    operation_id="get_readiness",
    responses={503: {"model": Readiness, "description": "Redis or the object store does not answer."}},
)
def readyz(state: State) -> JSONResponse:
    """200 only when Redis and the object store answer; else 503 naming what is down."""
    down: dict[str, str] = {}
    try:
        state.redis.ping()
    except Exception as exc:
        down["redis"] = type(exc).__name__
    try:
        state.objects.ping()
    except Exception as exc:
        down["object_store"] = type(exc).__name__
    if down:
        return JSONResponse({"status": "unavailable", "down": down}, status_code=503)
    return JSONResponse({"status": "ok"})
