"""/v1/objects: serves the local store's bytes behind URLs signed with an expiry and an HMAC."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse

from core.errors import ForbiddenError
from core.stores.local import LocalObjectStore
from services.api.deps import State

router = APIRouter(tags=["objects"], include_in_schema=False)


@router.get("/v1/objects/{key:path}")
def get_object(
    key: str, state: State, expires: Annotated[int, Query()], signature: Annotated[str, Query()]
) -> FileResponse:
    """The bytes of an object, for a holder of a valid signed URL."""
    store = state.objects
    if not isinstance(store, LocalObjectStore) or not store.verify_signature(key, expires, signature):
        raise ForbiddenError("the URL is expired, tampered with or not one this service signed")
    return FileResponse(store.open_path(key), media_type=store.content_type(key))
