"""An idempotent create settles its key even when the request is cancelled mid-submission."""

from __future__ import annotations

import asyncio

import pytest
import redis
from redis.asyncio import Redis as AsyncRedis

from core.errors import IdempotencyConflictError, ServiceError
from core.job_record import JobRecord, new_id
from core.stores.idempotency import IdempotencyStore
from core.submissions import Submission
from services.api.routes.jobs import submit_claimed


def _submission() -> Submission:
    record = JobRecord(id=new_id("job"), tenant="t1", kind="generation", queue="gpu", input={})
    return Submission(record, 1)


def test_a_cancelled_request_still_records_its_job_on_the_key(redis_client: redis.Redis, redis_url: str) -> None:
    made = _submission()

    async def main() -> None:
        aclient = AsyncRedis.from_url(redis_url)
        store = IdempotencyStore(aclient)
        stored = asyncio.Event()
        release = asyncio.Event()

        async def submit() -> Submission:
            stored.set()  # the job is in the store from here on
            await release.wait()
            return made

        assert await store.begin("t1", "k", "fp") is None
        request = asyncio.ensure_future(submit_claimed(store, "t1", "k", "fp", submit))
        await stored.wait()
        request.cancel()  # the client went away, or the server is shutting down
        with pytest.raises(asyncio.CancelledError):
            await request
        release.set()
        for _ in range(100):  # the shielded settle finishes on its own
            await asyncio.sleep(0.01)
            try:
                if await store.begin("t1", "k", "fp") == made.record.id:
                    break
            except IdempotencyConflictError:
                continue
        # A retry replays the job the cancelled request made: no second job.
        assert await store.begin("t1", "k", "fp") == made.record.id
        await aclient.aclose()

    asyncio.run(main())


def test_a_failed_submission_frees_the_key(redis_client: redis.Redis, redis_url: str) -> None:
    async def main() -> None:
        aclient = AsyncRedis.from_url(redis_url)
        store = IdempotencyStore(aclient)

        async def submit() -> Submission:
            raise ServiceError("refused")

        assert await store.begin("t1", "k", "fp") is None
        with pytest.raises(ServiceError):
            await submit_claimed(store, "t1", "k", "fp", submit)
        assert await store.begin("t1", "k", "fp") is None  # free again: the retry claims it
        await aclient.aclose()

    asyncio.run(main())
