"""Response models of the public API (docs/api.md): the files, concepts and jobs a client reads.

The same ``Job`` is what create calls, ``GET /v1/jobs/{id}``, every event stream entry and every webhook body carry
(``core.presenter`` makes it from a ``JobRecord``). The request models are in ``core.schemas``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.schemas import Metadata

JobKind = Literal["training", "generation"]
JobStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]


# ---- files -------------------------------------------------------------------------------------------------


class FileObject(BaseModel):
    """An uploaded image (or a job's output image, which is a file of the tenant too)."""

    id: str = Field(description="file_…")
    object: Literal["file"] = "file"
    content_type: str = Field(description="image/png, image/jpeg or image/webp.")
    bytes: int = Field(description="Size in bytes.")
    width: int = Field(description="Pixels, after EXIF orientation.")
    height: int = Field(description="Pixels, after EXIF orientation.")
    sha256: str = Field(description="Hex SHA-256 of the stored bytes.")
    created_at: datetime = Field(description="When it was uploaded (or written, for an output).")
    url: str | None = Field(
        None, description="A short-lived signed URL to the bytes (GET /v1/files/{id} only; null elsewhere)."
    )
    expires_at: datetime | None = Field(None, description="When url stops working.")


# ---- concepts ----------------------------------------------------------------------------------------------


class AdapterInfo(BaseModel):
    """A ready concept's trained adapter."""

    bytes: int = Field(description="Size of the adapter file.")
    sha256: str = Field(description="Hex SHA-256 of the adapter file.")
    format: str = Field(description="The adapter format and version (a safetensors file with a JSON metadata header).")
    url: str | None = Field(None, description="A short-lived signed URL to download the adapter.")


class Concept(BaseModel):
    """A concept a training taught the service."""

    id: str = Field(description="cpt_…")
    object: Literal["concept"] = "concept"
    name: str = Field(description="How prompts refer to it: <name>.")
    class_word: str = Field(description="The plain word the concept is a kind of.")
    status: Literal["training", "ready", "failed"] = Field(
        description="training while its training job runs; ready to use; failed when the training failed or was "
        "canceled."
    )
    training_job_id: str = Field(description="The training job that makes it.")
    created_at: datetime = Field(description="When the training was accepted.")
    adapter: AdapterInfo | None = Field(None, description="Set once ready.")
    metadata: Metadata | None = Field(None, description="The training request's metadata.")


class ConceptList(BaseModel):
    data: list[Concept] = Field(description="One page, newest first.")
    next_cursor: str | None = Field(None, description="cursor of the next page; null on the last.")


# ---- jobs --------------------------------------------------------------------------------------------------


class JobProgress(BaseModel):
    """How far a started job is, as one object: the same on GET, in SSE events and in webhook bodies.

    ``fraction`` covers the whole job (each stage weighted by its expected share of the run time, see
    ``core.progress``) and never decreases while the job runs; ``stage_fraction``, ``step`` and ``total_steps``
    describe the current stage alone. A succeeded job ends at ``stage="done"``, every fraction 1.0 and
    ``eta_seconds`` 0; a failed or canceled job keeps the values it last reached, with ``eta_seconds`` null.
    """

    fraction: float = Field(ge=0.0, le=1.0, description="Share of the whole job done, 0 to 1; never decreases.")
    stage: str = Field(description='The current stage, e.g. "training" or "sampling"; "done" once succeeded.')
    stage_fraction: float = Field(0.0, ge=0.0, le=1.0, description="Share of the current stage done, 0 to 1.")
    step: int = Field(0, ge=0, description="Steps of the current stage finished.")
    total_steps: int = Field(0, ge=0, description="Steps the current stage takes.")
    eta_seconds: float | None = Field(
        None, ge=0.0, description="Estimated seconds until the job ends (smoothed); null until it can be estimated."
    )


class JobError(BaseModel):
    """Why a job failed (or was canceled)."""

    code: str = Field(description="Stable machine-readable reason (docs/problems.md, job error codes).")
    message: str = Field(description="What happened, for a person.")


class JobMetrics(BaseModel):
    """How long the job waited and ran."""

    queue_seconds: float | None = Field(None, description="Time from creation to start (or to now while queued).")
    run_seconds: float | None = Field(
        None, description="Time from start to end (or to now while running); null before it starts."
    )
    stages: dict[str, float] = Field(default_factory=dict)


class JobUrls(BaseModel):
    """Absolute URLs of the job's routes."""

    get: str = Field(description="GET this to read the job.")
    cancel: str = Field(description="POST this to cancel it.")
    events: str = Field(description="GET this for its server-sent events.")


class Image(BaseModel):
    """An output image: a file of the tenant, with a short-lived URL signed when the job is read."""

    file_id: str
    # None when the file was deleted since the job ran (or on a view that signs no URLs).
    url: str | None = None
    expires_at: datetime | None = None
    width: int
    height: int
    seed: int | None = Field(None, description="The seed the image was sampled with; null for training masks.")


class TrainingOutput(BaseModel):
    """``output`` of a succeeded training job."""

    # Extra keys pass through: the worker's output is the source, this model only describes it.
    model_config = ConfigDict(extra="allow")

    kind: Literal["training"] = "training"
    concept_id: str = Field(description="The concept this training made ready.")
    masks: list[Image] = Field(description="The mask each training image was trained with (white = the concept).")
    diagnostics: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "What the training saw and measured: attention_in_mask, mask_sources, composites, loss_curve "
            "([{step, loss}], at most 100 points), warnings, …"
        ),
    )


class GenerationOutput(BaseModel):
    """``output`` of a succeeded generation job."""

    model_config = ConfigDict(extra="allow")

    kind: Literal["generation"] = "generation"
    images: list[Image] = Field(description="The final images (styled when the request gave a style).")
    stage1_images: list[Image] = Field(description="The fused images before styling (the same as images without).")
    masks: list[Image] = Field(description="Each concept's region: per image with conductor, shared with regional.")


JobOutput = Annotated[TrainingOutput | GenerationOutput, Field(discriminator="kind")]
"""A job's output, told apart by ``kind`` (the job's own kind)."""


class Job(BaseModel):
    """The one object create, GET, every stream event and every webhook return."""

    id: str = Field(description="job_…")
    object: Literal["job"] = "job"
    kind: JobKind = Field(description="training or generation: which request made it, and which output it has.")
    status: JobStatus = Field(
        description="queued → running → succeeded | failed | canceled, or queued → canceled; a job whose worker "
        "died goes back to queued and runs again."
    )
    created_at: datetime = Field(description="When it was accepted.")
    started_at: datetime | None = Field(
        None, description="When a worker started it (the latest start, if it ran again)."
    )
    completed_at: datetime | None = Field(None, description="When it reached a terminal status.")
    queue_position: int | None = Field(
        None, description="Jobs ahead of it in its queue (0 = next); null unless queued."
    )
    progress: JobProgress | None = Field(None, description="Where a running job is; null while queued.")
    input: dict[str, Any] = Field(description="The accepted request, with the defaults it ran with filled in.")
    output: JobOutput | None = Field(
        None, description="The result (succeeded jobs only): TrainingOutput or GenerationOutput, told apart by kind."
    )
    error: JobError | None = Field(None, description="Why it failed or was canceled; null otherwise.")
    metrics: JobMetrics = Field(default_factory=JobMetrics)
    urls: JobUrls
    metadata: Metadata | None = Field(None, description="The request's metadata, echoed.")

    @model_validator(mode="before")
    @classmethod
    def _output_kind(cls, data: Any) -> Any:
        """The worker stores an output without ``kind``; it is the job's, so the union can be told apart."""
        if isinstance(data, dict) and isinstance(data.get("output"), dict) and "kind" not in data["output"]:
            data = {**data, "output": {**data["output"], "kind": data.get("kind")}}
        return data


class JobList(BaseModel):
    data: list[Job] = Field(description="One page, newest first.")
    next_cursor: str | None = Field(None, description="cursor of the next page; null on the last.")
