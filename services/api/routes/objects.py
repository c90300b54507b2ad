"""/v1/objects: serves the local store's bytes behind URLs signed with an expiry and an HMAC."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse

from core.errors import ForbiddenError
from core.stores.local import LocalObjectStore
from services.api.deps import State
from services.api.errors import responses

router = APIRouter(tags=["objects"])


@router.get(
    "/v1/objects/{key:path}",
    response_class=FileResponse,
    operation_id="get_signed_object",
    responses={
        200: {
            "description": "The object's bytes, with its stored content type.",
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        },
        **responses(
            403,
            404,
            422,
            500,
            503,
            codes=("object_not_found", "validation_error", "object_store_error"),
            descriptions={
                403: "The URL is expired, tampered with, or not signed by this service (or the store is S3).",
                404: "The signed object has been deleted.",
                422: "expires or signature is missing, or expires is not an integer.",
                503: "The object store failed to read it.",
            },
        ),
    },
)
def get_object(
    key: str,
    state: State,
    expires: Annotated[int, Query(description="Unix seconds after which the URL is refused.")],
    signature: Annotated[str, Query(description="Hex HMAC-SHA256 of the key and expires.")],
) -> FileResponse:
    """The bytes of an object, for a holder of a valid signed URL (the ``url`` of a file, image or adapter).

    Needs no API key: the signature is the credential. Only the local object store serves URLs here; S3 URLs are
    presigned for the S3 endpoint.
    """
    store = state.objects
    if not isinstance(store, LocalObjectStore) or not store.verify_signature(key, expires, signature):
        raise ForbiddenError("the URL is expired, tampered with or not one this service signed")
    return FileResponse(store.open_path(key), media_type=store.content_type(key))
