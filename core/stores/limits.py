"""Per-key request rate limits in Redis (a fixed one-minute window), shared by every API replica."""

from __future__ import annotations

import time

import redis

from core.errors import RateLimitedError


class RateLimiter:
    def __init__(self, client: redis.Redis, *, per_minute: int) -> None:
        self._r = client
        self.per_minute = per_minute

    def hit(self, subject: str, *, now: float | None = None) -> None:
        """Count one request of ``subject``; ``RateLimitedError`` (with seconds to wait) over the limit."""
        current = time.time() if now is None else now
        window = int(current // 60)
        key = f"tessera:rate:{subject}:{window}"
        with self._r.pipeline() as pipe:
            pipe.incr(key)
            pipe.expire(key, 120)
            count = int(pipe.execute()[0])
        if count > self.per_minute:
            retry_after = max(1, int((window + 1) * 60 - current) + 1)
            raise RateLimitedError(
                f"more than {self.per_minute} requests this minute for this key (quotas.requests_per_minute)",
                retry_after=retry_after,
            )
