"""The API's response bodies as pydantic models.

These are a second definition of what the server sends (the client must install without the server), so they are
tolerant: every model keeps fields it does not know (``extra="allow"``) and most fields have defaults, so a server
that adds a field or a progress detail never breaks an older client. The client's test suite checks them against the
server's OpenAPI document, so a field the server sends is never missing here.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

JobKind = Literal["training", "generation"]
JobStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "canceled"})


class WireModel(BaseModel):
    """Base of every response model: unknown fields are kept, not refused."""

    model_config = ConfigDict(extra="allow")


# ---- files -------------------------------------------------------------------------------------------------


class File(WireModel):
    """An uploaded image (``POST /v1/files``) or a job's output file."""

    id: str
    object: Literal["file"] = "file"
    content_type: str
    bytes: int
    width: int
    height: int
    sha256: str
    created_at: datetime
    url: str | None = None
    expires_at: datetime | None = None


# ---- concepts ----------------------------------------------------------------------------------------------


class AdapterInfo(WireModel):
    """The trained adapter of a concept."""

    bytes: int
    sha256: str
    format: str
    url: str | None = None


class Concept(WireModel):
    """What a training produced: a name prompts can use as ``<name>``."""

    id: str
    object: Literal["concept"] = "concept"
    name: str
    class_word: str
    status: Literal["training", "ready", "failed"]
    training_job_id: str
    created_at: datetime
    adapter: AdapterInfo | None = None
    metadata: dict[str, Any] | None = None


class ConceptList(WireModel):
    """One page of concepts, newest first; ``next_cursor`` fetches the next page."""

    data: list[Concept]
    next_cursor: str | None = None


# ---- jobs --------------------------------------------------------------------------------------------------


class JobProgress(WireModel):
    """Where a running job is. ``fraction`` is the job's overall progress (0..1); the stage's own figures and the
    estimate to completion sit beside it."""

    fraction: float = 0.0
    stage: str | None = None
    step: int | None = None
    total_steps: int | None = None
    stage_fraction: float | None = None
    eta_seconds: float | None = None


class JobError(WireModel):
    """Why a job failed: a stable ``code`` and a message for people."""

    code: str
    message: str


class JobMetrics(WireModel):
    """Seconds a job waited, ran, and spent per stage."""

    queue_seconds: float | None = None
    run_seconds: float | None = None
    stages: dict[str, float] = Field(default_factory=dict)


class JobUrls(WireModel):
    """Where to read, cancel and follow a job."""

    get: str
    cancel: str
    events: str


class OutputImage(WireModel):
    """An image a job produced, with a short-lived signed URL."""

    file_id: str
    url: str | None = None
    expires_at: datetime | None = None
    width: int | None = None
    height: int | None = None
    seed: int | None = None


class TrainingOutput(WireModel):
    """What a succeeded training produced: its concept, the masks it trained with and its diagnostics."""

    kind: Literal["training"] = "training"
    concept_id: str
    masks: list[OutputImage] = Field(default_factory=list)
    diagnostics: dict[str, Any] = Field(default_factory=dict)


class GenerationOutput(WireModel):
    """What a succeeded generation produced: the images, and the intermediate ones of a two-stage fusion."""

    kind: Literal["generation"] = "generation"
    images: list[OutputImage]
    stage1_images: list[OutputImage] | None = None
    masks: list[OutputImage] | None = None


JobOutput = Annotated[TrainingOutput | GenerationOutput, Field(discriminator="kind")]
"""A job's output, by the job's kind."""


class Job(WireModel):
    """A training or a generation, as it stands."""

    id: str
    object: Literal["job"] = "job"
    kind: JobKind
    status: JobStatus
    created_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None
    queue_position: int | None = None
    progress: JobProgress | None = None
    input: dict[str, Any] = Field(default_factory=dict)
    output: JobOutput | None = None
    error: JobError | None = None
    metrics: JobMetrics = Field(default_factory=JobMetrics)
    urls: JobUrls | None = None
    metadata: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _output_by_kind(cls, data: Any) -> Any:
        # The output's shape follows the job's kind; say so before validation, so that a server that does not
        # repeat the kind inside the output still gets the right model (and a training output never parses as a
        # generation's).
        if isinstance(data, dict) and isinstance(data.get("output"), dict) and "kind" not in data["output"]:
            data = {**data, "output": {**data["output"], "kind": data.get("kind")}}
        return data

    @property
    def terminal(self) -> bool:
        """True once the job succeeded, failed or was canceled: it will not change again."""
        return self.status in TERMINAL_STATUSES

    @property
    def training_output(self) -> TrainingOutput:
        """The output of a succeeded training (raises ``ValueError`` for anything else)."""
        if not isinstance(self.output, TrainingOutput):
            raise ValueError(f"job {self.id} ({self.kind}, {self.status}) has no training output")
        return self.output

    @property
    def generation_output(self) -> GenerationOutput:
        """The output of a succeeded generation (raises ``ValueError`` for anything else)."""
        if not isinstance(self.output, GenerationOutput):
            raise ValueError(f"job {self.id} ({self.kind}, {self.status}) has no generation output")
        return self.output


class JobList(WireModel):
    """One page of jobs, newest first; ``next_cursor`` fetches the next page."""

    data: list[Job]
    next_cursor: str | None = None


class JobEvent(WireModel):
    """One server-sent event of a job's stream: the job after a change, and the id to resume after it."""

    id: str | None = None
    event: str = "job"
    job: Job


# ---- webhooks ----------------------------------------------------------------------------------------------


class WebhookSecret(WireModel):
    """The secret (``whsec_…``) that signs a tenant's webhooks (Standard Webhooks)."""

    key: str


class DeliveryAttempt(WireModel):
    """One attempt to deliver a webhook of a job."""

    delivery_id: str
    type: str
    attempt: int
    status_code: int | None = None
    latency_ms: float | None = None
    error: str | None = None
    at: datetime | None = None
    next_retry_at: datetime | None = None


class DeliveryList(WireModel):
    """Every webhook delivery attempt of a job."""

    data: list[DeliveryAttempt]


# ---- errors ------------------------------------------------------------------------------------------------


class FieldError(WireModel):
    """One field of a refused request and what is wrong with it."""

    field: str
    message: str
    type: str | None = None


class Problem(WireModel):
    """An RFC 9457 problem+json body with the API's stable ``code``."""

    type: str = "about:blank"
    title: str = ""
    status: int = 0
    detail: str = ""
    code: str = "http_error"
    errors: list[FieldError] | None = None
