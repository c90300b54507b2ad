"""/v1/trainings, /v1/generations and /v1/jobs: creating, reading, listing, canceling and following jobs."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Body, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from core.cancellation import cancel_job as core_cancel_job
from core.errors import InvalidRequestError
from core.job_record import JobRecord
from core.resources import Job, JobKind, JobList, JobStatus
from core.schemas import GenerationRequest, TrainingRequest
from core.stores.idempotency import IdempotencyStore, fingerprint
from core.stores.job_events import FIRST
from core.stores.webhook_store import DeliveryAttempt
from core.submissions import Submission, submit_generation, submit_training
from services.api.deps import Presenting, State, Tenant
from services.api.errors import AUTHENTICATED, responses
from services.api.state import ApiState

router = APIRouter()

REPLAYED_HEADER = "Idempotent-Replayed"
# Longest single blocking read of a job's event stream (ms); keep-alives still follow events_keepalive_seconds.
_EVENTS_BLOCK_MS = 1000
_CREATED_HEADERS = {
    "Location": {"description": "/v1/jobs/{id} of the job.", "schema": {"type": "string"}},
    REPLAYED_HEADER: {
        "description": "`true` when this answer replays an earlier request with the same Idempotency-Key.",
        "schema": {"type": "string", "enum": ["true"]},
    },
}

# The problem codes a create call can answer besides the ones every route can (responses() examples).
_CREATE_CODES = (
    "validation_error",
    "invalid_request",
    "webhook_url_forbidden",
    "invalid_idempotency_key",
    "idempotency_key_reused",
    "idempotency_request_in_flight",
    "quota_exceeded",
    "rate_limited",
    "redis_unavailable",
    "queue_unavailable",
)
_TRAINING_CODES = (
    *_CREATE_CODES,
    "unknown_file",
    "invalid_mask",
    "unknown_concept",
    "neighbour_images_expired",
    "concept_name_taken",
)
_GENERATION_CODES = (*_CREATE_CODES, "unknown_file", "unknown_concept")

TRAINING_EXAMPLES = {
    "minimal": {
        "summary": "A concept from three images (masks computed by Segment Anything)",
        "value": {
            "concept": {"name": "corgi", "class_word": "dog"},
            "images": [
                "file_3f9a0c1d2e4b5a6978c0d1e2",
                "file_7b1c2d3e4f5a69788c9d0e1f",
                "file_0a1b2c3d4e5f60718293a4b5",
            ],
        },
    },
    "full": {
        "summary": "With mask prompts, captions, options, a webhook and metadata",
        "value": {
            "concept": {"name": "corgi", "class_word": "dog"},
            "images": ["file_3f9a0c1d2e4b5a6978c0d1e2", "file_7b1c2d3e4f5a69788c9d0e1f"],
            "mask_prompts": [{"point": [0.5, 0.6]}, {"box": [0.1, 0.2, 0.9, 1.0]}],
            "captions": ["a <corgi> on a sofa", None],
            "options": {"max_train_steps": 500, "rank": 4, "seed": 0},
            "webhook": "https://client.example/hooks/tessera",
            "webhook_events_filter": ["start", "completed"],
            "metadata": {"order": "A-17"},
        },
    },
}

GENERATION_EXAMPLES = {
    "two_concepts": {
        "summary": "Two trained concepts side by side",
        "value": {"prompt": "a photo of <corgi> and <tabby> on the beach", "seed": 42},
    },
    "regions_and_style": {
        "summary": "Explicit regions, a style image and ControlNet",
        "value": {
            "prompt": "a photo of <corgi> and <tabby> on the beach",
            "negative_prompt": "lowres, blurry",
            "concepts": [
                {"concept": "corgi", "region": {"box": [0.0, 0.2, 0.5, 1.0]}, "weight": 0.7},
                {"concept": "tabby", "region": {"box": [0.5, 0.2, 1.0, 1.0]}},
            ],
            "fusion": "conductor",
            "style": {"image": "file_5c6d7e8f9a0b1c2d3e4f5a6b", "scale": 1.0, "mode": "style"},
            "control": {"type": "canny", "scale": 0.6},
            "width": 512,
            "height": 512,
            "num_inference_steps": 50,
            "guidance_scale": 7.5,
            "seed": 42,
            "num_outputs": 1,
        },
    },
}

IdempotencyKey = Annotated[
    str | None, Header(alias="Idempotency-Key", description="Makes a create call safe to retry (kept 24 h).")
]
_EVENT_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*(\d+)")
MAX_WAIT_SECONDS = 60


async def submit_claimed(
    idempotency: IdempotencyStore,
    tenant: str,
    key: str,
    digest: str,
    submit: Callable[[], Awaitable[Submission]],
) -> Submission:
    """Run ``submit`` under a claimed idempotency key, then record its job on the key (or free the key when it
    failed), in a task of its own that the request's cancellation cannot interrupt: cancelled between storing the job
    and recording it on the key, the key would be freed for a job that exists, and a retry would make a second."""

    async def settle() -> Submission:
        try:
            submission = await submit()
        except BaseException:
            await idempotency.abandon(tenant, key)
            raise
        await idempotency.complete(tenant, key, digest, submission.record.id)
        return submission

    return await asyncio.shield(asyncio.ensure_future(settle()))


async def _create(
    state: ApiState,
    tenant: str,
    request: Request,
    response: Response,
    body: TrainingRequest | GenerationRequest,
    idempotency_key: str | None,
    submit: Callable[[], Awaitable[Submission]],
) -> tuple[JobRecord, int | None]:
    """Run ``submit`` once per idempotency key: a replay answers the original job with the create's status (202)
    and ``Idempotent-Replayed: true``, so a retried request cannot tell a replay from the first answer by status.

    Returns the job and its queue position when it was just stored (``None`` for a replay: read it live).
    """
    if idempotency_key is None:
        submission = await submit()
    else:
        digest = fingerprint(request.method, request.url.path, body.model_dump(mode="json"))
        existing = await state.idempotency.begin(tenant, idempotency_key, digest)
        if existing is not None:
            response.headers[REPLAYED_HEADER] = "true"
            response.headers["Location"] = f"/v1/jobs/{existing}"
            return await run_in_threadpool(state.jobs.get_for_tenant, tenant, existing), None
        submission = await submit_claimed(state.idempotency, tenant, idempotency_key, digest, submit)
    response.headers["Location"] = f"/v1/jobs/{submission.record.id}"
    return submission.record, submission.queue_position


@router.post(
    "/v1/trainings",
    status_code=202,
    response_model=Job,
    tags=["trainings"],
    operation_id="create_training_job",
    responses={
        202: {"description": "Accepted: the training job, queued.", "headers": _CREATED_HEADERS},
        **responses(*AUTHENTICATED, 400, 409, 422, codes=_TRAINING_CODES),
    },
)
async def create_training(
    body: Annotated[TrainingRequest, Body(openapi_examples=TRAINING_EXAMPLES)],
    state: State,
    tenant: Tenant,
    presenter: Presenting,
    request: Request,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> Job:
    """Teach the service a concept from a few images (an ED-LoRA training job)."""

    # Training's checks read several records (images, masks, neighbours) and reserve the name: a rare, heavy
    # request, submitted in a worker thread on the sync stores.
    def submit() -> Awaitable[Submission]:
        return run_in_threadpool(
            submit_training,
            tenant,
            body,
            catalog=state.catalog,
            jobs=state.jobs,
            enqueue=state.enqueue,
            policy=state.policy,
        )

    record, position = await _create(state, tenant, request, response, body, idempotency_key, submit)
    return presenter.job(record, queue_position=position)


def _wait_seconds(prefer: str | None) -> float:
    match = _PREFER_WAIT.search(prefer or "")
    return 0.0 if match is None else float(min(int(match.group(1)), MAX_WAIT_SECONDS))


async def _wait_for_terminal(state: ApiState, record: JobRecord, seconds: float) -> JobRecord:
    """Follow the job's event stream until it is terminal or ``seconds`` passed (reads block at most
    ``_EVENTS_BLOCK_MS`` each, inside the Redis client's socket timeout)."""
    deadline = time.monotonic() + seconds
    last = FIRST
    while not record.terminal:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        block = max(1, min(_EVENTS_BLOCK_MS, int(remaining * 1000)))
        for event in await state.jobs.aread_events(record.id, after=last, block_ms=block):
            last, record = event.id, event.record
    return record


@router.post(
    "/v1/generations",
    status_code=202,
    response_model=Job,
    tags=["generations"],
    operation_id="create_generation_job",
    responses={
        200: {"model": Job, "description": "Finished within the `Prefer: wait` time.", "headers": _CREATED_HEADERS},
        202: {"description": "Accepted: the generation job as it stands.", "headers": _CREATED_HEADERS},
        **responses(
            *AUTHENTICATED,
            400,
            409,
            422,
            codes=_GENERATION_CODES,
            descriptions={409: "The first request with this Idempotency-Key is still being processed."},
        ),
    },
)
async def create_generation(
    body: Annotated[GenerationRequest, Body(openapi_examples=GENERATION_EXAMPLES)],
    state: State,
    tenant: Tenant,
    presenter: Presenting,
    request: Request,
    response: Response,
    idempotency_key: IdempotencyKey = None,
    prefer: Annotated[str | None, Header(description="wait=N (N ≤ 60): hold the answer until done.")] = None,
) -> Job:
    """Generate images that combine ready concepts."""

    # The hot path: on the event loop end to end (asyncio Redis), no thread-pool hop.
    def submit() -> Awaitable[Submission]:
        return submit_generation(
            tenant, body, catalog=state.catalog, jobs=state.jobs, enqueue=state.enqueue, policy=state.policy
        )

    record, position = await _create(state, tenant, request, response, body, idempotency_key, submit)
    wait = _wait_seconds(prefer)
    if wait > 0:
        record = await _wait_for_terminal(state, record, wait)
        response.headers["Preference-Applied"] = f"wait={int(wait)}"
        if record.terminal:
            response.status_code = 200
        position = None  # it may have moved on while we waited
    return presenter.job(record, queue_position=position)


@router.get(
    "/v1/jobs",
    response_model=JobList,
    operation_id="list_jobs",
    tags=["jobs"],
    responses=responses(*AUTHENTICATED, 422, codes=("validation_error",)),
)
def list_jobs(
    state: State,
    tenant: Tenant,
    presenter: Presenting,
    kind: Annotated[JobKind | None, Query(description="Only jobs of this kind.")] = None,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this status.")] = None,
    limit: Annotated[int, Query(ge=1, le=100, description="Page size.")] = 20,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page.")] = None,
) -> JobList:
    """The tenant's jobs, newest first."""
    records, next_cursor = state.jobs.list_jobs(tenant, kind=kind, status=status, limit=limit, cursor=cursor)
    return JobList(data=[presenter.job(r) for r in records], next_cursor=next_cursor)


@router.get(
    "/v1/jobs/{job_id}",
    response_model=Job,
    operation_id="get_job",
    tags=["jobs"],
    responses=responses(*AUTHENTICATED, 404, codes=("not_found",)),
)
def get_job(job_id: str, state: State, tenant: Tenant, presenter: Presenting) -> Job:
    """A job as it stands."""
    return presenter.job(state.jobs.get_for_tenant(tenant, job_id))


@router.post(
    "/v1/jobs/{job_id}/cancel",
    response_model=Job,
    operation_id="cancel_job",
    tags=["jobs"],
    responses=responses(*AUTHENTICATED, 404, codes=("not_found",)),
)
def cancel_job(job_id: str, state: State, tenant: Tenant, presenter: Presenting) -> Job:
    """Cancel a job: a queued one at once, a running one at its next step. Idempotent."""
    return presenter.job(core_cancel_job(tenant, job_id, jobs=state.jobs, catalog=state.catalog))


class DeliveryList(BaseModel):
    data: list[DeliveryAttempt] = Field(description="Every attempt, oldest first.")


@router.get(
    "/v1/jobs/{job_id}/webhook_deliveries",
    response_model=DeliveryList,
    operation_id="list_webhook_deliveries",
    tags=["jobs"],
    responses=responses(*AUTHENTICATED, 404, codes=("not_found",)),
)
def webhook_deliveries(job_id: str, state: State, tenant: Tenant) -> DeliveryList:
    """Every webhook delivery attempt for this job: status code, latency, error, next retry."""
    state.jobs.get_for_tenant(tenant, job_id)
    return DeliveryList(data=state.webhooks.attempts(job_id))


@router.get(
    "/v1/jobs/{job_id}/events",
    response_class=StreamingResponse,
    operation_id="stream_job_events",
    tags=["jobs"],
    responses={
        200: {
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
            "description": "Server-sent events named `job`, each `data` a Job (JSON), with an `id` for Last-Event-ID.",
        },
        **responses(*AUTHENTICATED, 404, 422, codes=("not_found", "invalid_request")),
    },
)
async def job_events(
    job_id: str,
    state: State,
    tenant: Tenant,
    presenter: Presenting,
    request: Request,
    last_event_id: Annotated[
        str | None, Header(alias="Last-Event-ID", description="Resume after this event (the id of one received).")
    ] = None,
) -> StreamingResponse:
    """Server-sent events: the Job on every change, resumable with Last-Event-ID, ending at a terminal status."""
    state.jobs.get_for_tenant(tenant, job_id)
    if last_event_id is not None and not _EVENT_ID.match(last_event_id):
        raise InvalidRequestError(
            f"Last-Event-ID must be an id this stream sent, got {last_event_id!r}", field="Last-Event-ID"
        )
    keepalive_ms = int(state.settings.events_keepalive_seconds * 1000)

    async def stream() -> AsyncIterator[str]:
        last = last_event_id or FIRST
        idle_since = time.monotonic()
        while not await request.is_disconnected():
            # Block in short reads: one longer than the Redis client's socket timeout (5 s by default) would end
            # the stream with a timeout while a job is quiet (a worker loading models).
            block = min(keepalive_ms, _EVENTS_BLOCK_MS)
            events = await state.jobs.aread_events(job_id, after=last, block_ms=block)
            if not events:
                if time.monotonic() - idle_since >= keepalive_ms / 1000:
                    idle_since = time.monotonic()
                    yield ": keep-alive\n\n"
                continue
            idle_since = time.monotonic()
            for event in events:
                last = event.id
                job = presenter.job(event.record, progress=event.progress, live=False)
                yield f"id: {last}\nevent: job\ndata: {job.model_dump_json()}\n\n"
                if event.record.terminal:
                    return

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)
