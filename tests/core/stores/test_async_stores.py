"""The stores' asyncio reads and writes on a private Redis: the catalog's and job store's twins behave exactly like
their sync methods; API keys and idempotency claims (async only) hold, refuse, replay and free as the API needs."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
import redis
from redis.asyncio import Redis as AsyncRedis

from core.errors import ConflictError, IdempotencyConflictError, InvalidRequestError, NotFoundError, QuotaExceededError
from core.job_record import JobRecord, new_id
from core.stores.catalog import Catalog, ConceptRecord, FileRecord
from core.stores.idempotency import IdempotencyStore
from core.stores.job_store import JobStore
from core.stores.keys import ApiKeyStore
from core.tasks import QueueMessage

T = TypeVar("T")
START = datetime(2026, 1, 1, tzinfo=UTC)


def _run(redis_url: str, body: Callable[[AsyncRedis], Awaitable[T]]) -> T:
    """``body`` on a fresh asyncio client of the test server, in its own event loop."""

    async def main() -> T:
        aclient = AsyncRedis.from_url(redis_url)
        try:
            return await body(aclient)
        finally:
            await aclient.aclose()

    return asyncio.run(main())


def _snapshot(client: redis.Redis) -> dict[bytes, bytes | None]:
    """Every key of the database with its serialized value, to show that a refusal wrote nothing."""
    return {key: client.dump(key) for key in client.keys("*")}  # type: ignore[misc]


def _job(tenant: str, n: int) -> JobRecord:
    """A training job created ``n`` ms after START (distinct, ordered queue positions)."""
    created = START + timedelta(milliseconds=n)
    return JobRecord(id=new_id("job"), tenant=tenant, kind="training", queue="train", input={}, created_at=created)


def _file(tenant: str, file_id: str) -> FileRecord:
    return FileRecord(id=file_id, tenant=tenant, content_type="image/png", bytes=1, width=4, height=4, sha256="")


def test_afind_concepts_reads_like_find_concepts(redis_client: redis.Redis, redis_url: str) -> None:
    catalog = Catalog(redis_client)
    rex = ConceptRecord(id="cpt_rex1", tenant="t1", name="rex", class_word="dog", training_job_id="job_x")
    catalog.reserve_concept(rex)
    catalog.reserve_concept(rex.model_copy(update={"id": "cpt_fido2", "tenant": "t2", "name": "fido"}))
    refs = ["rex", "cpt_rex1", "nobody", "cpt_missing", "cpt_fido2", "fido", "rex"]

    async def body(aclient: AsyncRedis) -> tuple[dict[str, Any], dict[str, Any]]:
        acatalog = Catalog(redis_client, async_client=aclient)
        return await acatalog.afind_concepts("t1", refs), await acatalog.afind_concepts("t1", [])

    found, empty = _run(redis_url, body)
    assert found == {"rex": rex, "cpt_rex1": rex, "nobody": None, "cpt_missing": None, "cpt_fido2": None, "fido": None}
    assert found == catalog.find_concepts("t1", refs) and empty == {} == catalog.find_concepts("t1", [])
    # The other tenant finds its own concept by either ref through the async twin too.
    t2 = _run(redis_url, lambda aclient: Catalog(redis_client, async_client=aclient).afind_concepts("t2", ["fido"]))
    assert t2["fido"] is not None and t2["fido"].id == "cpt_fido2"


def test_aget_files_reads_like_get_files(redis_client: redis.Redis, redis_url: str) -> None:
    catalog = Catalog(redis_client)
    mine, theirs = _file("t1", "file_a"), _file("t2", "file_b")
    catalog.add_file(mine)
    catalog.add_file(theirs)
    ids = ["file_a", "file_missing", "file_a", "file_b"]

    async def body(aclient: AsyncRedis) -> tuple[dict[str, Any], dict[str, Any]]:
        acatalog = Catalog(redis_client, async_client=aclient)
        return await acatalog.aget_files("t1", ids), await acatalog.aget_files("t1", [])

    found, empty = _run(redis_url, body)
    assert found == {"file_a": mine, "file_missing": None, "file_b": None}
    assert list(found) == ["file_a", "file_missing", "file_b"]  # each id once, in first-mention order
    assert catalog.get_files("t1", ids) == found and empty == {} == catalog.get_files("t1", [])
    assert catalog.get_files("t2", ids)["file_b"] == theirs and catalog.get_file("t1", "file_a") == mine
    with pytest.raises(NotFoundError):
        catalog.get_file("t1", "file_b")


def test_acreate_positions_quota_and_conflict_write_nothing_on_refusal(
    redis_client: redis.Redis, redis_url: str
) -> None:
    first, second, third = _job("t1", 1), _job("t1", 2), _job("t1", 3)

    async def body(aclient: AsyncRedis) -> list[int]:
        store = JobStore(redis_client, async_client=aclient)
        positions = [
            await store.acreate(first, max_active=2, message=QueueMessage("broker-list", first.id)),
            await store.acreate(second, max_active=2),
        ]
        before = _snapshot(redis_client)
        with pytest.raises(QuotaExceededError):
            await store.acreate(third, max_active=2, message=QueueMessage("broker-list", third.id))
        assert _snapshot(redis_client) == before
        with pytest.raises(ConflictError):
            await store.acreate(first.model_copy(update={"input": {"x": 1}}), message=QueueMessage("broker-list", "x"))
        assert _snapshot(redis_client) == before
        return positions

    assert _run(redis_url, body) == [1, 2]
    store = JobStore(redis_client)
    assert store.get(first.id) == first and store.get(second.id) == second
    assert [event.record for event in store.read_events(first.id)] == [first]
    assert redis_client.lrange("broker-list", 0, -1) == [first.id.encode()]
    # The sync create sees the same quota; another tenant gets the next place in the shared queue.
    with pytest.raises(QuotaExceededError):
        store.create(third, max_active=2)
    assert store.create(_job("t2", 4), max_active=2) == 3


def test_atenant_of_reads_active_revoked_and_unknown_keys(redis_client: redis.Redis, redis_url: str) -> None:
    keys = ApiKeyStore(redis_client)
    _, active = keys.create("t1")
    revoked_record, revoked = keys.create("t2")
    keys.revoke(revoked_record.id)

    async def body(aclient: AsyncRedis) -> list[str | None]:
        akeys = ApiKeyStore(redis_client, async_client=aclient)
        return [await akeys.atenant_of(secret) for secret in (active, revoked, "tsk_unknown")]

    assert _run(redis_url, body) == ["t1", None, None]


def _idem_keys(client: redis.Redis) -> list[bytes]:
    return client.keys("tessera:idem:*")  # type: ignore[return-value]


def test_claims_are_held_refused_replayed_and_freed(redis_client: redis.Redis, redis_url: str) -> None:
    async def body(aclient: AsyncRedis) -> None:
        store = IdempotencyStore(aclient)
        # A claim: in flight for a second request, refused with another body, replayed once completed.
        assert await store.begin("t1", "k1", "d1") is None
        assert 0 < redis_client.ttl(_idem_keys(redis_client)[0]) <= 24 * 3600
        with pytest.raises(IdempotencyConflictError):
            await store.begin("t1", "k1", "d1")
        with pytest.raises(InvalidRequestError) as reused:
            await store.begin("t1", "k1", "d2")
        assert reused.value.code == "idempotency_key_reused" and reused.value.field == "Idempotency-Key"
        assert await store.begin("t2", "k1", "d2") is None  # keys are per tenant
        await store.complete("t1", "k1", "d1", "job_1")
        assert await store.begin("t1", "k1", "d1") == "job_1"
        assert await store.begin("t1", "k1", "d1") == "job_1"  # a replay does not consume the key
        await store.abandon("t1", "k1")
        assert await store.begin("t1", "k1", "d2") is None  # freed: any body may claim it again
        with pytest.raises(InvalidRequestError) as bad:
            await store.begin("t1", "", "d1")
        assert bad.value.code == "invalid_idempotency_key"

    _run(redis_url, body)
    assert len(_idem_keys(redis_client)) == 2  # t1/k1, t2/k1


def test_concurrent_claims_of_one_key_yield_exactly_one(redis_client: redis.Redis, redis_url: str) -> None:
    async def body(aclient: AsyncRedis) -> list[str | BaseException | None]:
        store = IdempotencyStore(aclient)
        redis_client.script_flush()  # every call meets NOSCRIPT and loads the script, concurrently
        return await asyncio.gather(*(store.begin("t1", "same", "d") for _ in range(8)), return_exceptions=True)

    results = _run(redis_url, body)
    assert results.count(None) == 1
    assert sum(isinstance(r, IdempotencyConflictError) for r in results) == 7


@pytest.mark.parametrize(
    "call",
    [
        lambda r: Catalog(r).afind_concepts("t1", ["rex"]),
        lambda r: Catalog(r).aget_files("t1", ["file_a"]),
        lambda r: JobStore(r).acreate(_job("t1", 1)),
        lambda r: ApiKeyStore(r).atenant_of("tsk_x"),
    ],
    ids=["afind_concepts", "aget_files", "acreate", "atenant_of"],
)
def test_a_store_without_async_client_refuses_its_async_methods(
    redis_client: redis.Redis, call: Callable[[redis.Redis], Coroutine[Any, Any, object]]
) -> None:
    with pytest.raises(RuntimeError, match="async_client"):
        asyncio.run(call(redis_client))
    assert redis_client.keys("*") == []
