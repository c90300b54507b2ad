"""Records → public objects: add short-lived signed URLs, progress and queue positions at read time.

URLs are never stored: a job's output keeps file ids, and every read (an API response, an SSE event,
a webhook body) signs fresh URLs for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.errors import NotFoundError
from core.job_record import JobRecord
from core.resources import AdapterInfo, Concept, FileObject, Job, JobProgress
from core.stores.catalog import Catalog, ConceptRecord, FileRecord
from core.stores.job_store import JobStore
from core.stores.objects import ObjectStore


@dataclass
class Presenter:
    """Renders records for clients; shared by the API, the event stream and webhook deliveries."""

    jobs: JobStore
    catalog: Catalog
    objects: ObjectStore
    public_base_url: str
    url_expiry_seconds: int

    def file(self, record: FileRecord, *, with_url: bool = False) -> FileObject:
        return render_file(self, record, with_url=with_url)

    def concept(self, record: ConceptRecord) -> Concept:
        return render_concept(self, record)

    def job(
        self,
        record: JobRecord,
        *,
        progress: JobProgress | None = None,
        live: bool = True,
        queue_position: int | None = None,
    ) -> Job:
        """A job; ``live`` reads its current progress and queue position, else uses ``progress`` as given.

        A ``queue_position`` already known (the create call's) saves reading it again.
        """
        return render_job(self, record, progress=progress, live=live, queue_position=queue_position)


def render_file(state: Presenter, record: FileRecord, *, with_url: bool = False) -> FileObject:
    url = expires_at = None
    if with_url:
        signed = state.objects.signed_url(record.key, expires_in=state.url_expiry_seconds)
        url, expires_at = signed.url, signed.expires_at
    return FileObject(
        id=record.id,
        content_type=record.content_type,
        bytes=record.bytes,
        width=record.width,
        height=record.height,
        sha256=record.sha256,
        created_at=record.created_at,
        url=url,
        expires_at=expires_at,
    )


def render_concept(state: Presenter, record: ConceptRecord) -> Concept:
    adapter = None
    if record.status == "ready" and record.adapter_bytes is not None:
        signed = state.objects.signed_url(record.adapter_key, expires_in=state.url_expiry_seconds)
        adapter = AdapterInfo(
            bytes=record.adapter_bytes,
            sha256=record.adapter_sha256 or "",
            format=record.adapter_format or "",
            url=signed.url,
        )
    return Concept(
        id=record.id,
        name=record.name,
        class_word=record.class_word,
        status=record.status,
        training_job_id=record.training_job_id,
        created_at=record.created_at,
        adapter=adapter,
        metadata=record.metadata,
    )


def _sign_images(state: Presenter, tenant: str, value: Any) -> Any:
    """Add ``url`` and ``expires_at`` to every ``{"file_id": …}`` in a job output."""
    if isinstance(value, list):
        return [_sign_images(state, tenant, v) for v in value]
    if not isinstance(value, dict):
        return value
    if "file_id" in value:
        try:
            record = state.catalog.get_file(tenant, value["file_id"])
        except NotFoundError:
            return {**value, "url": None, "expires_at": None}
        signed = state.objects.signed_url(record.key, expires_in=state.url_expiry_seconds)
        return {**value, "url": signed.url, "expires_at": signed.expires_at.isoformat()}
    return {k: _sign_images(state, tenant, v) for k, v in value.items()}


def render_job(
    state: Presenter,
    record: JobRecord,
    *,
    progress: JobProgress | None = None,
    live: bool = True,
    queue_position: int | None = None,
) -> Job:
    if live:
        progress = None if record.status == "queued" else state.jobs.get_progress(record.id)
        if queue_position is None:
            queue_position = state.jobs.queue_position(record)
    if record.output is not None:
        # Signed on the stored dict, before the typed output model is built from it.
        record = record.model_copy(update={"output": _sign_images(state, record.tenant, record.output)})
    return record.to_public(base_url=state.public_base_url, progress=progress, queue_position=queue_position)
