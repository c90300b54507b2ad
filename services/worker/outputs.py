"""Output files of a job: images stored as PNG in the object store and recorded as the tenant's files.

An output's id is derived from its job and its place in the output (``output_file_id``), so a run that follows a
dead one (a killed worker, a hand-back) writes the same objects and records again instead of leaving the first
run's uploads behind with no record pointing to them.
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

import PIL.Image

from core.stores.catalog import FileRecord
from services.worker.run import JobRun


def output_file_id(job_id: str, name: str) -> str:
    """The file id of output ``name`` (``"images/0"``, ``"masks/1"``) of job ``job_id``: the same on every run."""
    return "file_" + hashlib.sha256(f"{job_id}/{name}".encode()).hexdigest()[:24]


def store_png(run: JobRun, image: PIL.Image.Image, seed: int | None, *, name: str) -> dict[str, Any]:
    """Store ``image`` as output ``name`` of ``run``'s job (a file of its tenant) and return its Image entry
    (docs/api.md, Image; without URL). The API's presenter adds ``url`` and ``expires_at`` when the job is read.
    """
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = buffer.getvalue()
    file_id = output_file_id(run.record.id, name)
    earlier = run.ctx.catalog.file_record(file_id)
    record = FileRecord(
        id=file_id,
        tenant=run.record.tenant,
        content_type="image/png",
        bytes=len(data),
        width=image.width,
        height=image.height,
        sha256=hashlib.sha256(data).hexdigest(),
        purpose="output",
    )
    if earlier is not None:  # a dead run stored it: keep its creation time, so the tenant's file index has it once
        record.created_at = earlier.created_at
    run.ctx.objects.put_bytes(record.key, data, "image/png")
    run.ctx.catalog.add_file(record)
    return {"file_id": record.id, "width": image.width, "height": image.height, "seed": seed}
