"""A job's event stream: one Redis stream entry per change of the job (SSE replay, ``Prefer: wait``).

Each entry holds the record as it then was and, for a progress report or the end of a started job, the progress
(empty otherwise). The job store writes entries (``event_fields``) and reads them back typed (``JobStore.read_events``
and ``aread_events``), so nothing outside it decodes stream fields.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from core.job_record import JobRecord
from core.resources import JobProgress

EVENTS_MAXLEN = 5000
"""Events kept per job for replay; a job has a few status changes and throttled progress reports."""
FIRST = "0-0"
"""The position before a stream's first entry: reading after it replays every event."""


@dataclass(frozen=True)
class JobEvent:
    """One change of a job, as its event stream recorded it.

    Args:
        id: the stream entry id (``"<ms>-<seq>"``): read after it to resume (SSE ``Last-Event-ID``).
        record: the job record as the change left it.
        progress: the progress reported with it (a progress event, or the final progress of a started job that
            ended); None for other changes.
    """

    id: str
    record: JobRecord
    progress: JobProgress | None


def event_fields(record: JobRecord, progress: JobProgress | None) -> dict[str, str]:
    """The fields of the entry for one change (the create script writes the same two, progress empty)."""
    return {"record": record.model_dump_json(), "progress": progress.model_dump_json() if progress else ""}


def decode_events(reply: Sequence[Any]) -> list[JobEvent]:
    """The events of an ``XREAD`` reply for one stream (``[[key, [(id, fields), …]]]``; empty when none came)."""
    return [_decode(entry_id, fields) for _, entries in reply for entry_id, fields in entries]


def _decode(entry_id: bytes | str, fields: Mapping[bytes, bytes]) -> JobEvent:
    progress = fields.get(b"progress")
    return JobEvent(
        id=entry_id.decode() if isinstance(entry_id, bytes) else entry_id,
        record=JobRecord.model_validate_json(fields[b"record"]),
        progress=JobProgress.model_validate_json(progress) if progress else None,
    )
