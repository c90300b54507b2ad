"""Canceling a job (``POST /v1/jobs/{id}/cancel``), next to submitting one (``core.submissions``)."""

from __future__ import annotations

from core.errors import InvalidTransitionError
from core.job_record import JobRecord
from core.plans import TrainingPlan
from core.stores.catalog import Catalog
from core.stores.job_store import JobStore


def cancel_job(tenant: str, job_id: str, *, jobs: JobStore, catalog: Catalog) -> JobRecord:
    """Cancel a job of ``tenant``: a queued one at once, a running one at its next step. Idempotent.

    A training canceled while queued leaves its concept ``failed``, as one canceled while running does (the worker
    marks that one when it stops). Returns the record as it stands after the request.

    Raises:
        NotFoundError: the tenant has no job ``job_id``.
    """
    record = jobs.get_for_tenant(tenant, job_id)
    if record.terminal:
        return record
    jobs.request_cancel(job_id)
    try:
        record = jobs.transition(job_id, "queued", "canceled")
    except InvalidTransitionError:
        # Running (the worker sees the flag at its next step) or it finished meanwhile.
        return jobs.get(job_id)
    if isinstance(record.plan, TrainingPlan):
        catalog.fail_concept(record.tenant, record.plan.concept_id)
    return record
