"""Retention: uploaded inputs and generated outputs are deleted after a configurable time.

``sweep`` removes expired files (record and bytes) and is run periodically by workers; on S3 the same
expiry is also set as bucket lifecycle rules by prefix (``inputs/``, ``outputs/``), so the bytes go even
if no worker runs. Afterwards a file id answers 404, and a signed URL of it 404 (local) or 403/404 (S3).
"""

from __future__ import annotations

import logging
import math
import time

from core.config import RetentionSettings
from core.stores.catalog import PURPOSE_PREFIX, Catalog, FilePurpose
from core.stores.objects import ObjectStore

logger = logging.getLogger(__name__)


def expiry_days(settings: RetentionSettings) -> dict[str, int]:
    """Lifecycle rules per key prefix, in whole days (S3's granularity), rounded up."""
    return {
        PURPOSE_PREFIX["input"]: max(1, math.ceil(settings.input_seconds / 86400)),
        PURPOSE_PREFIX["output"]: max(1, math.ceil(settings.output_seconds / 86400)),
    }


def sweep(catalog: Catalog, objects: ObjectStore, settings: RetentionSettings, *, now: float | None = None) -> int:
    """Delete every file older than its purpose's retention; returns how many were deleted."""
    current = time.time() if now is None else now
    deleted = 0
    ages: dict[FilePurpose, int] = {"input": settings.input_seconds, "output": settings.output_seconds}
    for purpose, max_age in ages.items():
        for file_id in catalog.files_created_before(purpose, current - max_age):
            record = catalog.file_record(file_id)
            if record is None:
                catalog.forget_file(purpose, file_id)
                continue
            objects.delete(record.key)
            catalog.delete_file(record)
            deleted += 1
    if deleted:
        logger.info("retention: deleted %d expired files", deleted)
    return deleted
