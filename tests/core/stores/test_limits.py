"""The sliding-window rate limit over a real Redis, on a clock the test controls."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from redis.asyncio import Redis as AsyncRedis

from core.stores.limits import RateLimiter, RateLimitExceeded, RateLimitState

Hit = Callable[..., RateLimitState]


def _limiter(redis_url: str, per_minute: int) -> Hit:
    """``hit(subject, now=...)`` of a limiter on ``redis_url``, called from sync test code (a client per call:
    an asyncio client belongs to the event loop it first ran in)."""

    def hit(subject: str, now: float | None = None) -> RateLimitState:
        async def once() -> RateLimitState:
            client = AsyncRedis.from_url(redis_url)
            try:
                return await RateLimiter(client, per_minute=per_minute).hit(subject, now=now)
            finally:
                await client.aclose()

        return asyncio.run(once())

    return hit


@pytest.mark.usefixtures("redis_client")  # a flushed database
def test_no_sixty_seconds_hold_more_than_the_limit_across_a_minute_edge(redis_url: str) -> None:
    hit = _limiter(redis_url, 10)
    start = 1_800_000_059.0  # one second before a clock minute's edge
    for i in range(10):
        hit("k", now=start + i * 0.05)
    # A fixed window would start a fresh count at the edge, one second later; the sliding window does not.
    with pytest.raises(RateLimitExceeded) as refused:
        hit("k", now=start + 1.5)
    assert refused.value.code == "rate_limited"
    assert refused.value.state.remaining == 0 and refused.value.retry_after == 59  # ceil(58.5)
    # Sixty seconds after the first request it leaves the window, and exactly one more is allowed.
    state = hit("k", now=start + 60.01)
    assert state.remaining == 0
    with pytest.raises(RateLimitExceeded):
        hit("k", now=start + 60.02)
    # By +60.2 the requests at +0.05 ... +0.20 have left in turn: 7 in the window with this one, 3 to go.
    assert hit("k", now=start + 60.2).remaining == 3


@pytest.mark.usefixtures("redis_client")
def test_refused_requests_are_not_counted_and_keys_are_separate(redis_url: str) -> None:
    hit = _limiter(redis_url, 2)
    assert hit("a", now=1000.0).remaining == 1
    assert hit("a", now=1001.0).remaining == 0
    for t in range(1002, 1059):
        with pytest.raises(RateLimitExceeded):
            hit("a", now=float(t))
    # Retrying did not push the window: the first request leaves it at 1060.
    assert hit("a", now=1060.5).remaining == 0
    assert hit("b", now=1002.0).remaining == 1


@pytest.mark.usefixtures("redis_client")
def test_redis_clock_is_used_when_no_time_is_given(redis_url: str) -> None:
    hit = _limiter(redis_url, 3)
    states = [hit("c") for _ in range(3)]
    assert [s.remaining for s in states] == [2, 1, 0] and all(0 < s.reset_seconds <= 60 for s in states)
    with pytest.raises(RateLimitExceeded) as refused:
        hit("c")
    assert 1 <= refused.value.retry_after <= 60
