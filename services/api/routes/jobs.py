"""/v1/trainings, /v1/generations and /v1/jobs: creating, reading, listing and canceling jobs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from core.errors import InvalidTransitionError
from core.schemas import GenerationRequest, Job, JobKind, JobList, JobStatus, TrainingRequest
from core.submissions import submit_generation, submit_training
from services.api.deps import State, Tenant

router = APIRouter(tags=["jobs"])


@router.post("/v1/trainings", status_code=202, response_model=Job)
def create_training(body: TrainingRequest, state: State, tenant: Tenant, response: Response) -> Job:
    """Teach the service a concept from a few images (an ED-LoRA training job)."""
    record = submit_training(tenant, body, catalog=state.catalog, jobs=state.jobs, enqueue=state.enqueue)
    response.headers["Location"] = f"/v1/jobs/{record.id}"
    return state.presenter.job(record)


@router.post("/v1/generations", status_code=202, response_model=Job)
def create_generation(body: GenerationRequest, state: State, tenant: Tenant, response: Response) -> Job:
    """Generate images that combine ready concepts."""
    record = submit_generation(tenant, body, catalog=state.catalog, jobs=state.jobs, enqueue=state.enqueue)
    response.headers["Location"] = f"/v1/jobs/{record.id}"
    return state.presenter.job(record)


@router.get("/v1/jobs", response_model=JobList)
def list_jobs(
    state: State,
    tenant: Tenant,
    kind: JobKind | None = None,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: str | None = None,
) -> JobList:
    """The tenant's jobs, newest first."""
    records, next_cursor = state.jobs.list_jobs(tenant, kind=kind, status=status, limit=limit, cursor=cursor)
    return JobList(data=[state.presenter.job(r) for r in records], next_cursor=next_cursor)


@router.get("/v1/jobs/{job_id}", response_model=Job)
def get_job(job_id: str, state: State, tenant: Tenant) -> Job:
    """A job as it stands."""
    return state.presenter.job(state.jobs.get_for_tenant(tenant, job_id))


@router.post("/v1/jobs/{job_id}/cancel", response_model=Job)
def cancel_job(job_id: str, state: State, tenant: Tenant) -> Job:
    """Cancel a job: a queued one at once, a running one at its next step. Idempotent."""
    record = state.jobs.get_for_tenant(tenant, job_id)
    if not record.terminal:
        state.jobs.request_cancel(job_id)
        try:
            record = state.jobs.transition(job_id, "queued", "canceled")
            _release_concept(state, record.tenant, record.plan.get("concept_id"))
        except InvalidTransitionError:
            # Running (the worker sees the flag at its next step) or it finished meanwhile.
            record = state.jobs.get(job_id)
    return state.presenter.job(record)


def _release_concept(state: State, tenant: str, concept_id: str | None) -> None:
    """A training canceled before it ran leaves a failed concept, as one canceled while running does."""
    if concept_id is None:
        return
    concept = state.catalog.get_concept(tenant, concept_id)
    concept.status = "failed"
    state.catalog.save_concept(concept)
