"""Job states and the transitions between them (pure: no I/O).

```
queued ──► running ──► succeeded | failed | canceled
   │          │
   │          └──► queued        (its worker died: the job is run again)
   └──► canceled | failed
```
Terminal states have no exits, so a redelivered task that finds its job terminal does nothing.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field, model_validator

from core.errors import InvalidTransitionError
from core.plans import JobPlan, upgrade_plan
from core.resources import Job, JobError, JobKind, JobMetrics, JobProgress, JobStatus, JobUrls

TERMINAL: frozenset[JobStatus] = frozenset({"succeeded", "failed", "canceled"})

TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    "queued": frozenset({"running", "canceled", "failed"}),
    "running": frozenset({"succeeded", "failed", "canceled", "queued"}),
    "succeeded": frozenset(),
    "failed": frozenset(),
    "canceled": frozenset(),
}


def utcnow() -> datetime:
    """The current time, timezone-aware UTC (every stored time is UTC)."""
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    """An opaque, unguessable id with a type prefix, e.g. ``job_3f…``."""
    return f"{prefix}_{secrets.token_hex(12)}"


def check_transition(job_id: str, old: JobStatus, new: JobStatus) -> None:
    """Raise ``InvalidTransitionError`` unless ``old -> new`` is allowed."""
    if new not in TRANSITIONS[old]:
        raise InvalidTransitionError(f"job {job_id}: {old} -> {new} not allowed")


class JobRecord(BaseModel):
    """What the job store keeps about a job; the public ``Job`` is a view of it."""

    id: str
    tenant: str
    kind: JobKind
    status: JobStatus = "queued"
    queue: str
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    completed_at: datetime | None = None
    input: dict[str, Any]
    output: dict[str, Any] | None = None
    error: JobError | None = None
    stages: dict[str, float] = Field(default_factory=dict)
    metadata: dict[str, Any] | None = None
    # Times the job was handed back to the queue because its worker died.
    redeliveries: int = 0
    # What the worker runs (object keys, concept ids, sampling values); never shown to clients. None only for a
    # record made without submission (tests, tools).
    plan: JobPlan | None = None

    @model_validator(mode="before")
    @classmethod
    def _typed_plan(cls, data: Any) -> Any:
        # A record stored before plans were typed holds a dict without a kind: read it as the typed plan.
        if isinstance(data, dict) and isinstance(data.get("plan"), dict) and "kind" not in data["plan"]:
            data = {**data, "plan": upgrade_plan(data.get("kind", ""), data["plan"], data.get("input") or {})}
        return data

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def to_public(
        self, *, base_url: str, progress: JobProgress | None, queue_position: int | None, now: datetime | None = None
    ) -> Job:
        """The client-facing ``Job`` (docs/api.md, Job)."""
        now = now or utcnow()
        # Waiting ends when the job starts, or when it ends without starting (canceled while queued).
        queue_seconds = (self.started_at or self.completed_at or now) - self.created_at
        run_seconds = None
        if self.started_at is not None:
            run_seconds = ((self.completed_at or now) - self.started_at).total_seconds()
        path = f"{base_url.rstrip('/')}/v1/jobs/{self.id}"
        return Job(
            id=self.id,
            kind=self.kind,
            status=self.status,
            created_at=self.created_at,
            started_at=self.started_at,
            completed_at=self.completed_at,
            queue_position=queue_position if self.status == "queued" else None,
            progress=progress,
            input=self.input,
            output=self.output,
            error=self.error,
            metrics=JobMetrics(
                queue_seconds=round(queue_seconds.total_seconds(), 3),
                run_seconds=None if run_seconds is None else round(run_seconds, 3),
                stages=dict(self.stages),
            ),
            urls=JobUrls(get=path, cancel=f"{path}/cancel", events=f"{path}/events"),
            metadata=self.metadata,
        )
