"""/healthz and /readyz."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from services.api.deps import State

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """200 while the process serves."""
    return {"status": "ok"}


@router.get("/readyz")
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
