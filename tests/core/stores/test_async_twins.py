"""The stores' asyncio twins behave exactly like their sync counterparts on the same (private) Redis."""

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
from core.stores.limits import RateLimiter, RateLimitExceeded, RateLimitState
from core.tasks import QueueMessage

T = TypeVar("T")
START = datetime(2026, 1, 1, tzinfo=UTC)
Outcome = tuple[str, RateLimitState, int]


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


def _outcome(hit: Callable[[], RateLimitState]) -> Outcome:
    try:
        return "ok", hit(), 0
    except RateLimitExceeded as exc:
        return exc.code, exc.state, exc.retry_after


async def _aoutcome(hit: Awaitable[RateLimitState]) -> Outcome:
    try:
        return "ok", await hit, 0
    except RateLimitExceeded as exc:
        return exc.code, exc.state, exc.retry_after


def test_ahit_counts_and_refuses_like_hit(redis_client: redis.Redis, redis_url: str) -> None:
    times = [1000.0, 1010.0, 1020.0, 1030.0, 1065.0]
    limiter = RateLimiter(redis_client, per_minute=3)
    sync = [_outcome(lambda t=t: limiter.hit("sync", now=t)) for t in times]  # type: ignore[misc]

    async def body(aclient: AsyncRedis) -> list[Outcome]:
        alimiter = RateLimiter(redis_client, per_minute=3, async_client=aclient)
        found = [await _aoutcome(alimiter.ahit("async", now=t)) for t in times]
        # The async hits fill the same log the sync limiter reads.
        await alimiter.ahit("shared", now=2000.0)
        await alimiter.ahit("shared", now=2001.0)
        return found

    assert _run(redis_url, body) == sync
    assert [(code, s.remaining, s.reset_seconds, after) for code, s, after in sync] == [
        ("ok", 2, 60, 0),
        ("ok", 1, 50, 0),
        ("ok", 0, 40, 0),
        ("rate_limited", 0, 30, 30),
        ("ok", 0, 5, 0),  # the request at 1000 left the window
    ]
    assert limiter.hit("shared", now=2002.0).remaining == 0
    with pytest.raises(RateLimitExceeded):
        limiter.hit("shared", now=2003.0)


def test_atenant_of_matches_tenant_of(redis_client: redis.Redis, redis_url: str) -> None:
    keys = ApiKeyStore(redis_client)
    _, active = keys.create("t1")
    revoked_record, revoked = keys.create("t2")
    keys.revoke(revoked_record.id)
    secrets = [active, revoked, "tsk_unknown"]

    async def body(aclient: AsyncRedis) -> list[str | None]:
        akeys = ApiKeyStore(redis_client, async_client=aclient)
        return [await akeys.atenant_of(secret) for secret in secrets]

    assert _run(redis_url, body) == ["t1", None, None] == [keys.tenant_of(secret) for secret in secrets]


def _idem_keys(client: redis.Redis) -> list[bytes]:
    return client.keys("tessera:idem:*")  # type: ignore[return-value]


def test_abegin_acomplete_aabandon_share_claims_with_the_sync_methods(
    redis_client: redis.Redis, redis_url: str
) -> None:
    sync = IdempotencyStore(redis_client)

    async def body(aclient: AsyncRedis) -> None:
        store = IdempotencyStore(redis_client, async_client=aclient)
        # An async claim: in flight for both twins, refused with another body, replayed once completed.
        assert await store.abegin("t1", "k1", "d1") is None
        assert 0 < redis_client.ttl(_idem_keys(redis_client)[0]) <= 24 * 3600
        with pytest.raises(IdempotencyConflictError):
            await store.abegin("t1", "k1", "d1")
        with pytest.raises(IdempotencyConflictError):
            sync.begin("t1", "k1", "d1")
        with pytest.raises(InvalidRequestError) as reused:
            await store.abegin("t1", "k1", "d2")
        assert reused.value.code == "idempotency_key_reused" and reused.value.field == "Idempotency-Key"
        assert await store.abegin("t2", "k1", "d2") is None  # keys are per tenant
        await store.acomplete("t1", "k1", "d1", "job_1")
        assert await store.abegin("t1", "k1", "d1") == "job_1" == sync.begin("t1", "k1", "d1")
        await store.aabandon("t1", "k1")
        assert await store.abegin("t1", "k1", "d2") is None  # freed: any body may claim it again
        # A sync claim, seen by the async twins.
        assert sync.begin("t1", "k2", "d1") is None
        with pytest.raises(IdempotencyConflictError):
            await store.abegin("t1", "k2", "d1")
        sync.complete("t1", "k2", "d1", "job_2")
        assert await store.abegin("t1", "k2", "d1") == "job_2"
        sync.abandon("t1", "k2")
        assert await store.abegin("t1", "k2", "d1") is None
        with pytest.raises(InvalidRequestError) as bad:
            await store.abegin("t1", "", "d1")
        assert bad.value.code == "invalid_idempotency_key"

    _run(redis_url, body)
    assert len(_idem_keys(redis_client)) == 3  # t1/k1, t2/k1, t1/k2


def test_concurrent_abegin_yields_exactly_one_claim(redis_client: redis.Redis, redis_url: str) -> None:
    async def body(aclient: AsyncRedis) -> list[str | BaseException | None]:
        store = IdempotencyStore(redis_client, async_client=aclient)
        redis_client.script_flush()  # every call meets NOSCRIPT and loads the script, concurrently
        return await asyncio.gather(*(store.abegin("t1", "same", "d") for _ in range(8)), return_exceptions=True)

    results = _run(redis_url, body)
    assert results.count(None) == 1
    assert sum(isinstance(r, IdempotencyConflictError) for r in results) == 7


@pytest.mark.parametrize(
    "call",
    [
        lambda r: Catalog(r).afind_concepts("t1", ["rex"]),
        lambda r: Catalog(r).aget_files("t1", ["file_a"]),
        lambda r: JobStore(r).acreate(_job("t1", 1)),
        lambda r: RateLimiter(r, per_minute=3).ahit("k"),
        lambda r: ApiKeyStore(r).atenant_of("tsk_x"),
        lambda r: IdempotencyStore(r).abegin("t1", "k", "d"),
        lambda r: IdempotencyStore(r).acomplete("t1", "k", "d", "job_1"),
        lambda r: IdempotencyStore(r).aabandon("t1", "k"),
    ],
    ids=["afind_concepts", "aget_files", "acreate", "ahit", "atenant_of", "abegin", "acomplete", "aabandon"],
)
def test_a_store_without_async_client_refuses_its_async_methods(
    redis_client: redis.Redis, call: Callable[[redis.Redis], Coroutine[Any, Any, object]]
) -> None:
    with pytest.raises(RuntimeError, match="async_client"):
        asyncio.run(call(redis_client))
    assert redis_client.keys("*") == []
