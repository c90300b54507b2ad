"""Canceling a job in core (the route only presents the result): queued, running, finished, another tenant's."""

from __future__ import annotations

import pytest
import redis

from core.cancellation import cancel_job
from core.errors import NotFoundError
from core.job_record import JobRecord, new_id
from core.plans import TrainingPlan
from core.schemas import ConceptSpec
from core.stores.catalog import Catalog, ConceptRecord
from core.stores.job_store import JobStore
from core.training_options import EDLoRAConfig


@pytest.fixture
def stores(redis_client: redis.Redis) -> tuple[JobStore, Catalog]:
    return JobStore(redis_client), Catalog(redis_client)


def _training(jobs: JobStore, catalog: Catalog) -> tuple[JobRecord, ConceptRecord]:
    job_id = new_id("job")
    concept = ConceptRecord(id=new_id("cpt"), tenant="t1", name="rex", class_word="dog", training_job_id=job_id)
    catalog.reserve_concept(concept)
    plan = TrainingPlan(
        concept_id=concept.id,
        concept=ConceptSpec(name="rex", class_word="dog"),
        image_keys=["inputs/t1/file_1"],
        options=EDLoRAConfig(),
    )
    record = JobRecord(id=job_id, tenant="t1", kind="training", queue="train", input={}, plan=plan)
    jobs.create(record)
    return record, concept


def test_a_queued_training_is_canceled_at_once_and_leaves_its_concept_failed(stores: tuple[JobStore, Catalog]) -> None:
    jobs, catalog = stores
    record, concept = _training(jobs, catalog)
    canceled = cancel_job("t1", record.id, jobs=jobs, catalog=catalog)
    assert canceled.status == "canceled" and jobs.get(record.id).status == "canceled"
    assert catalog.get_concept("t1", concept.id).status == "failed"
    # Idempotent: a second cancel answers the same finished job and changes nothing.
    assert cancel_job("t1", record.id, jobs=jobs, catalog=catalog).status == "canceled"


def test_a_running_job_is_flagged_for_its_worker_and_keeps_running(stores: tuple[JobStore, Catalog]) -> None:
    jobs, catalog = stores
    record, concept = _training(jobs, catalog)
    jobs.transition(record.id, "queued", "running")
    assert cancel_job("t1", record.id, jobs=jobs, catalog=catalog).status == "running"
    assert jobs.cancel_requested(record.id)
    # The worker marks the concept when it stops; the cancel call does not race it.
    assert catalog.get_concept("t1", concept.id).status == "training"


def test_a_finished_job_is_answered_as_it_is(stores: tuple[JobStore, Catalog]) -> None:
    jobs, catalog = stores
    record, _ = _training(jobs, catalog)
    jobs.transition(record.id, "queued", "running")
    jobs.transition(record.id, "running", "succeeded")
    assert cancel_job("t1", record.id, jobs=jobs, catalog=catalog).status == "succeeded"
    assert not jobs.cancel_requested(record.id)


def test_another_tenants_job_is_not_found_and_not_touched(stores: tuple[JobStore, Catalog]) -> None:
    jobs, catalog = stores
    record, _ = _training(jobs, catalog)
    with pytest.raises(NotFoundError):
        cancel_job("t2", record.id, jobs=jobs, catalog=catalog)
    assert jobs.get(record.id).status == "queued" and not jobs.cancel_requested(record.id)
