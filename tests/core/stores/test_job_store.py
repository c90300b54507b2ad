"""The Redis job store: compare-and-set, progress, cancel flags, leases, queue positions, pagination."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import redis
from redis.asyncio import Redis as AsyncRedis

from core.errors import ConflictError, InvalidTransitionError, NotFoundError, QuotaExceededError
from core.job_record import JobRecord, new_id
from core.progress import DONE
from core.resources import JobProgress
from core.stores import job_keys
from core.stores.job_events import JobEvent
from core.stores.job_store import JobStore
from core.tasks import QueueMessage


def _job(tenant: str = "t1", kind: str = "training", queue: str = "train") -> JobRecord:
    return JobRecord(id=new_id("job"), tenant=tenant, kind=kind, queue=queue, input={})  # type: ignore[arg-type]


@pytest.fixture
def store(redis_client: redis.Redis) -> JobStore:
    return JobStore(redis_client, lease_seconds=1.0)


def test_create_get_and_tenant_isolation(store: JobStore) -> None:
    job = _job()
    store.create(job)
    assert store.get(job.id).status == "queued"
    assert store.get_for_tenant("t1", job.id).id == job.id
    with pytest.raises(NotFoundError):
        store.get_for_tenant("t2", job.id)
    with pytest.raises(NotFoundError):
        store.get("job_missing")


def test_create_returns_the_queue_position_and_refuses_a_taken_id(store: JobStore) -> None:
    first, second = _job(), _job()
    assert store.create(first) == 1
    time.sleep(0.001)
    assert store.create(second) == 2
    # The first event is the stored record, for replay by the event stream.
    assert [event.record for event in store.read_events(first.id)] == [store.get(first.id)]
    with pytest.raises(ConflictError):
        store.create(first.model_copy(update={"input": {"other": True}}))
    assert store.get(first.id).input == {}


def test_quota_holds_under_concurrent_creates(store: JobStore) -> None:
    barrier = threading.Barrier(12)
    accepted: list[str] = []
    refused: list[str] = []

    def create() -> None:
        job = _job(tenant="busy")
        barrier.wait()
        try:
            store.create(job, max_active=5)
            accepted.append(job.id)
        except QuotaExceededError:
            refused.append(job.id)

    threads = [threading.Thread(target=create) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(accepted) == 5 and len(refused) == 7
    for job_id in refused:
        with pytest.raises(NotFoundError):
            store.get(job_id)
    assert store.create(_job(tenant="other"), max_active=5) == 6  # another tenant, same queue


def _message(job: JobRecord) -> QueueMessage:
    return QueueMessage("broker-list", f"message of {job.id}")


def test_create_pushes_the_message_with_the_record_and_a_refused_create_pushes_nothing(
    store: JobStore, redis_client: redis.Redis
) -> None:
    first = _job(tenant="small")
    assert store.create(first, max_active=1, message=_message(first)) == 1
    assert redis_client.lrange("broker-list", 0, -1) == [f"message of {first.id}".encode()]
    # Over the quota: neither the record nor its message.
    over = _job(tenant="small")
    with pytest.raises(QuotaExceededError):
        store.create(over, max_active=1, message=_message(over))
    # The id taken: the first record stays and no second message is pushed.
    with pytest.raises(ConflictError):
        store.create(first.model_copy(update={"tenant": "other"}), message=_message(first))
    with pytest.raises(NotFoundError):
        store.get(over.id)
    assert redis_client.lrange("broker-list", 0, -1) == [f"message of {first.id}".encode()]
    # Without a message the script pushes nothing (the caller's transport sends it).
    store.create(_job())
    assert redis_client.llen("broker-list") == 1


def test_compare_and_set_allows_exactly_one_winner(store: JobStore) -> None:
    job = _job()
    store.create(job)
    wins, losses = [], []

    def claim() -> None:
        try:
            store.transition(job.id, "queued", "running")
            wins.append(1)
        except InvalidTransitionError:
            losses.append(1)

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (len(wins), len(losses)) == (1, 7)
    record = store.get(job.id)
    assert record.status == "running" and record.started_at is not None


def test_terminal_is_final_and_times_are_set(store: JobStore) -> None:
    job = _job()
    store.create(job)
    store.transition(job.id, "queued", "running")
    done = store.transition(job.id, "running", "succeeded", update=lambda r: setattr(r, "output", {"x": 1}))
    assert done.completed_at is not None and done.output == {"x": 1}
    with pytest.raises(InvalidTransitionError):
        store.transition(job.id, ["running", "succeeded"], "failed")
    assert store.get(job.id).status == "succeeded"


def test_queue_positions_follow_the_queue(store: JobStore) -> None:
    jobs = [_job() for _ in range(3)]
    for j in jobs:
        store.create(j)
        time.sleep(0.001)
    assert [store.queue_position(store.get(j.id)) for j in jobs] == [1, 2, 3]
    store.transition(jobs[0].id, "queued", "running")
    assert store.queue_position(store.get(jobs[0].id)) is None
    assert store.queue_position(store.get(jobs[2].id)) == 2
    assert store.queue_depth("train") == 2


def test_progress_and_cancel_flag(store: JobStore) -> None:
    job = _job()
    store.create(job)
    assert store.get_progress(job.id) is None
    value = JobProgress(fraction=0.4, stage="training", stage_fraction=0.25, step=5, total_steps=20, eta_seconds=3.0)
    # Only a running job takes progress.
    assert not store.report_progress(job.id, value)
    assert store.get_progress(job.id) is None
    store.transition(job.id, "queued", "running")
    assert store.report_progress(job.id, value)
    assert store.get_progress(job.id) == value
    assert not store.cancel_requested(job.id)
    store.request_cancel(job.id)
    assert store.cancel_requested(job.id)


def _events(store: JobStore, job_id: str) -> list[tuple[str, JobProgress | None]]:
    return [(event.record.status, event.progress) for event in store.read_events(job_id, count=10_000)]


def test_terminal_progress_is_final_in_the_store_and_the_event(store: JobStore) -> None:
    reached = JobProgress(fraction=0.3, stage="training", stage_fraction=0.1, step=2, total_steps=20, eta_seconds=9.0)
    ended = {}
    for status in ("succeeded", "failed", "canceled"):
        job = _job()
        store.create(job)
        store.transition(job.id, "queued", "running")
        store.report_progress(job.id, reached)
        store.transition(job.id, "running", status)  # type: ignore[arg-type]
        ended[status] = store.get_progress(job.id)
        # The terminal event carries the same progress as the store (SSE shows what GET shows).
        assert _events(store, job.id)[-1] == (status, ended[status])
        # A late report from the worker does not move a finished job.
        assert not store.report_progress(job.id, reached.model_copy(update={"fraction": 0.5}))
        assert store.get_progress(job.id) == ended[status]
        # Kept as long as the record, not an hour.
        assert store._r.ttl(job_keys.progress(job.id)) > 3600
    assert ended["succeeded"] == DONE
    assert ended["failed"] == ended["canceled"] == reached.model_copy(update={"eta_seconds": None})


def test_canceled_while_queued_has_no_progress_and_a_requeued_job_starts_over(store: JobStore) -> None:
    job = _job()
    store.create(job)
    store.transition(job.id, "queued", "canceled")
    assert store.get_progress(job.id) is None and _events(store, job.id)[-1] == ("canceled", None)
    job = _job()
    store.create(job)
    store.transition(job.id, "queued", "running")
    store.report_progress(job.id, JobProgress(fraction=0.5, stage="training"))
    store.transition(job.id, "running", "queued")  # its worker died
    assert store.get_progress(job.id) is None
    store.transition(job.id, "queued", "canceled")
    assert store.get_progress(job.id) is None


def test_leases_expire_and_orphans_are_found(store: JobStore) -> None:
    job = _job()
    store.create(job)
    assert store.acquire_lease(job.id, "w1")
    assert not store.acquire_lease(job.id, "w2")
    store.transition(job.id, "queued", "running")
    assert store.orphaned_jobs() == []
    assert store.renew_lease(job.id, "w1") and not store.renew_lease(job.id, "w2")
    time.sleep(1.2)
    assert store.orphaned_jobs() == [job.id]
    store.transition(job.id, "running", "queued")
    assert store.orphaned_jobs() == []


def test_list_newest_first_with_filters_and_cursor(store: JobStore) -> None:
    created = []
    for i in range(5):
        j = _job(kind="training" if i % 2 else "generation", queue="train" if i % 2 else "generate")
        store.create(j)
        created.append(j.id)
        time.sleep(0.001)
    store.create(_job(tenant="other"))
    page, cursor = store.list_jobs("t1", kind=None, status=None, limit=2, cursor=None)
    assert [r.id for r in page] == created[::-1][:2] and cursor
    page2, cursor2 = store.list_jobs("t1", kind=None, status=None, limit=2, cursor=cursor)
    assert [r.id for r in page2] == created[::-1][2:4] and cursor2
    page3, cursor3 = store.list_jobs("t1", kind=None, status=None, limit=2, cursor=cursor2)
    assert [r.id for r in page3] == created[:1] and cursor3 is None
    trainings, _ = store.list_jobs("t1", kind="training", status=None, limit=10, cursor=None)
    assert [r.id for r in trainings] == [created[3], created[1]]


def test_events_read_back_typed_and_resume_after_an_id(store: JobStore) -> None:
    job = _job()
    store.create(job)
    store.transition(job.id, "queued", "running")
    progress = JobProgress(fraction=0.5, stage="training", stage_fraction=0.5, step=1, total_steps=2)
    store.report_progress(job.id, progress)
    events = store.read_events(job.id)
    assert [(e.record.status, e.progress) for e in events] == [
        ("queued", None),
        ("running", None),
        ("running", progress),
    ]
    assert all(e.record.id == job.id for e in events) and len({e.id for e in events}) == 3
    # Resuming after an event gives only the later ones; after the last, a bounded wait gives none.
    assert [e.id for e in store.read_events(job.id, after=events[0].id)] == [e.id for e in events[1:]]
    started = time.monotonic()
    assert store.read_events(job.id, after=events[-1].id, block_ms=200) == []
    assert time.monotonic() - started >= 0.15


def test_async_event_reads_match_the_sync_ones(redis_url: str, redis_client: redis.Redis) -> None:
    store = JobStore(redis_client)
    job = _job()
    store.create(job)
    store.transition(job.id, "queued", "canceled")
    expected = store.read_events(job.id)

    async def read() -> tuple[list[JobEvent], list[JobEvent]]:
        aclient = AsyncRedis.from_url(redis_url)
        try:
            astore = JobStore(redis_client, async_client=aclient)
            return (
                await astore.aread_events(job.id),
                await astore.aread_events(job.id, after=expected[-1].id, block_ms=100),
            )
        finally:
            await aclient.aclose()

    assert asyncio.run(read()) == (expected, [])
    with pytest.raises(RuntimeError, match="async_client"):
        asyncio.run(store.aread_events(job.id))
