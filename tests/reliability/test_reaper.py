"""The reaper keeps every recorded job runnable: over a real Redis and real Celery messages in it."""

from __future__ import annotations

from datetime import timedelta
from functools import partial

import pytest
import redis

from core.config import Settings
from core.job_record import JobRecord, new_id
from core.stores.job_store import JobStore
from services.queue import CeleryTaskQueue, broker_task_ids, make_producer
from services.worker.reaper import reap_orphans, resend_stranded


def _job(kind: str = "training", queue: str = "train") -> JobRecord:
    return JobRecord(id=new_id("job"), tenant="t1", kind=kind, queue=queue, input={})  # type: ignore[arg-type]


@pytest.fixture
def store(redis_client: redis.Redis) -> JobStore:
    return JobStore(redis_client, lease_seconds=1.0)


@pytest.fixture
def enqueue(redis_url: str) -> CeleryTaskQueue:
    return CeleryTaskQueue(make_producer(Settings(redis={"url": redis_url})))


def test_a_queued_job_whose_message_was_lost_is_sent_again_once(
    store: JobStore, redis_client: redis.Redis, enqueue: CeleryTaskQueue
) -> None:
    held = partial(broker_task_ids, redis_client)
    lost, kept, generation = _job(), _job(), _job("generation", "generate")
    for job in (lost, kept, generation):
        store.create(job)
    enqueue(kept)
    assert held("train") == {kept.id} and held("generate") == set()

    assert sorted(resend_stranded(store, held, enqueue, stranded_after=0)) == sorted([lost.id, generation.id])
    assert held("train") == {lost.id, kept.id} and held("generate") == {generation.id}
    # Every queued job has its message now: a second pass sends nothing.
    assert resend_stranded(store, held, enqueue, stranded_after=0) == []


def test_young_jobs_and_jobs_that_left_the_queue_are_left_alone(
    store: JobStore, redis_client: redis.Redis, enqueue: CeleryTaskQueue
) -> None:
    held = partial(broker_task_ids, redis_client)
    young, started = _job(), _job()
    for job in (young, started):
        store.create(job)
    store.transition(started.id, "queued", "running")
    # The API writes the record, then the message: a job younger than the grace period may be between the two.
    assert resend_stranded(store, held, enqueue, stranded_after=60) == []
    assert resend_stranded(store, held, enqueue, stranded_after=0) == [young.id]
    assert held("train") == {young.id}


def test_a_message_reserved_by_a_worker_counts_as_held(
    store: JobStore, redis_client: redis.Redis, enqueue: CeleryTaskQueue
) -> None:
    job = _job()
    store.create(job)
    enqueue(job)
    # What kombu does when a worker takes a message without acknowledging it (acks_late): list → unacked hash.
    raw = redis_client.rpop("train")
    assert isinstance(raw, bytes)
    redis_client.hset("unacked", "tag-1", b"[" + raw + b', "", "train"]')
    assert broker_task_ids(redis_client, "train") == {job.id}
    assert broker_task_ids(redis_client, "generate") == set()
    assert resend_stranded(store, partial(broker_task_ids, redis_client), enqueue, stranded_after=0) == []


def test_queued_before_lists_oldest_first_by_creation(store: JobStore) -> None:
    first, second = _job(), _job()
    second.created_at = first.created_at + timedelta(seconds=1)
    store.create(first)
    store.create(second)
    assert store.queued_before("train", first.created_at) == []
    assert store.queued_before("train", second.created_at) == [first.id]
    assert store.queued_before("train", second.created_at + timedelta(microseconds=1)) == [first.id, second.id]


def test_an_orphaned_running_job_is_handed_back_then_failed_after_the_cap(
    store: JobStore, redis_client: redis.Redis, enqueue: CeleryTaskQueue
) -> None:
    job = _job()
    store.create(job)
    for attempt in range(3):
        store.transition(job.id, "queued", "running")  # a worker took it, then died without a lease
        handled = reap_orphans(store, enqueue, max_redeliveries=2)
        assert handled == [job.id]
        record = store.get(job.id)
        if attempt < 2:
            assert record.status == "queued" and record.redeliveries == attempt + 1
        else:
            assert record.status == "failed" and record.error is not None and record.error.code == "worker_lost"
    assert broker_task_ids(redis_client, "train") == {job.id}
