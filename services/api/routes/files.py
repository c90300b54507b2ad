"""/v1/files: training images, masks and references."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Response, UploadFile

from core.errors import FileTooLargeError
from core.images import validate_image
from core.job_record import new_id
from core.resources import FileObject
from core.stores.catalog import FileRecord
from services.api.deps import Presenting, State, Tenant
from services.api.errors import AUTHENTICATED, responses

router = APIRouter(prefix="/v1/files", tags=["files"])

_UPLOAD_EXAMPLE = {
    "requestBody": {
        "content": {
            "multipart/form-data": {
                "examples": {
                    "png": {
                        "summary": "One PNG image (curl -F file=@corgi-1.png)",
                        "value": {"file": "(the bytes of corgi-1.png)"},
                    }
                }
            }
        }
    }
}


@router.post(
    "",
    status_code=201,
    response_model=FileObject,
    operation_id="upload_file",
    responses=responses(
        *AUTHENTICATED, 400, 413, 415, 422, codes=("validation_error", "invalid_image", "image_too_large")
    ),
    openapi_extra=_UPLOAD_EXAMPLE,
)
async def upload_file(
    state: State,
    tenant: Tenant,
    presenter: Presenting,
    file: Annotated[
        UploadFile, File(description="A PNG, JPEG or WebP image (20 MB, 4096×4096 and 16 megapixels by default).")
    ],
) -> FileObject:
    """Upload an image (PNG, JPEG or WebP); it is decoded and verified before anything is stored."""
    limit = state.settings.limits.max_file_bytes
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise FileTooLargeError(f"file: larger than the limit of {limit} bytes", field="file")
    image = validate_image(data, state.settings.limits)
    record = FileRecord(
        id=new_id("file"),
        tenant=tenant,
        content_type=image.content_type,
        bytes=len(image.data),
        width=image.width,
        height=image.height,
        sha256=image.sha256,
    )
    # Bytes first, record second: a crash between the two leaves an unreferenced object, never a dangling record.
    state.objects.put_bytes(record.key, image.data, image.content_type)
    state.catalog.add_file(record)
    return presenter.file(record)


@router.get(
    "/{file_id}",
    response_model=FileObject,
    operation_id="get_file",
    responses=responses(*AUTHENTICATED, 404, codes=("not_found",)),
)
def get_file(file_id: str, state: State, tenant: Tenant, presenter: Presenting) -> FileObject:
    """A file, with a short-lived URL to its bytes."""
    return presenter.file(state.catalog.get_file(tenant, file_id), with_url=True)


@router.delete(
    "/{file_id}",
    status_code=204,
    operation_id="delete_file",
    responses=responses(*AUTHENTICATED, 404, codes=("not_found",)),
)
def delete_file(file_id: str, state: State, tenant: Tenant) -> Response:
    """Delete a file and its bytes."""
    record = state.catalog.get_file(tenant, file_id)
    state.catalog.delete_file(record)
    state.objects.delete(record.key)
    return Response(status_code=204)
