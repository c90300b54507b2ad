"""Output files of a job: images stored as PNG in the object store and recorded as the tenant's files."""

from __future__ import annotations

import hashlib
import io
from typing import Any

import PIL.Image

from core.jobs import new_id
from core.stores.catalog import FileRecord
from services.worker.run import JobRun


def store_png(run: JobRun, image: PIL.Image.Image, seed: int | None) -> dict[str, Any]:
    """Store ``image`` as an output file of ``run``'s tenant and return its Image entry (API.md §5, without URL).

    The API's presenter adds ``url`` and ``expires_at`` when the job is read.
    """
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = buffer.getvalue()
    record = FileRecord(
        id=new_id("file"),
        tenant=run.record.tenant,
        content_type="image/png",
        bytes=len(data),
        width=image.width,
        height=image.height,
        sha256=hashlib.sha256(data).hexdigest(),
        purpose="output",
    )
    run.ctx.objects.put_bytes(record.key, data, "image/png")
    run.ctx.catalog.add_file(record)
    return {"file_id": record.id, "width": image.width, "height": image.height, "seed": seed}
