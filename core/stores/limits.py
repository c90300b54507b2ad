"""Per-key request rate limits in Redis: a sliding one-minute window shared by every API replica.

Each key has a log of the times of its allowed requests (a sorted set, scores in milliseconds). A request is
allowed while fewer than ``per_minute`` requests were allowed in the 60 seconds before it, so no stretch of 60
seconds ever holds more than the limit (a fixed clock-minute window let a key make twice its limit across a
minute's edge). Refused requests are not logged: a client that keeps retrying is not locked out for longer. One
server-side script per request, on Redis's clock (replicas with skewed clocks agree).
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

from redis.asyncio import Redis as AsyncRedis

from core.errors import RateLimitedError

WINDOW_SECONDS = 60

# KEYS[1]: the key's log. ARGV: window ms, limit, member suffix, now ms (empty: Redis's clock).
# Returns {allowed 0/1, requests in the window (this one included when allowed), oldest request's ms, now ms}.
_HIT = """
local now = tonumber(ARGV[4])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local window = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
local allowed = 0
if count < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now, now .. ':' .. ARGV[3])
  count = count + 1
  allowed = 1
end
redis.call('PEXPIRE', KEYS[1], window)
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {allowed, count, tonumber(oldest[2] or now), now}
"""


@dataclass(frozen=True)
class RateLimitState:
    """Where a key stands after one request: what the ``RateLimit-*`` response headers say.

    Args:
        limit: requests allowed in any 60 seconds.
        remaining: requests the key may still make now.
        reset_seconds: seconds until the oldest request in the window leaves it (one more request is then allowed).
    """

    limit: int
    remaining: int
    reset_seconds: int

    def headers(self) -> dict[str, str]:
        """``RateLimit-Limit``, ``RateLimit-Remaining``, ``RateLimit-Reset`` and ``RateLimit-Policy``."""
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_seconds),
            "RateLimit-Policy": f"{self.limit};w={WINDOW_SECONDS}",
        }


class RateLimitExceeded(RateLimitedError):
    """``rate_limited``, with the key's state for the response headers."""

    def __init__(self, message: str, *, state: RateLimitState) -> None:
        super().__init__(message, retry_after=max(1, state.reset_seconds))
        self.state = state


class RateLimiter:
    """The sliding-window limit of ``per_minute`` requests per subject (see the module docstring), on an asyncio
    client: the API's authentication dependency counts every request on its event loop."""

    def __init__(self, client: AsyncRedis, *, per_minute: int) -> None:
        self.per_minute = per_minute
        self._hit = client.register_script(_HIT)

    async def hit(self, subject: str, *, now: float | None = None) -> RateLimitState:
        """Count one request of ``subject`` (``now``: seconds since the epoch, for tests; Redis's clock otherwise).

        Returns:
            the key's state after this request.

        Raises:
            RateLimitExceeded: ``per_minute`` requests were already allowed in the last 60 seconds.
        """
        window_ms = WINDOW_SECONDS * 1000
        args: list[int | str] = [
            window_ms,
            self.per_minute,
            secrets.token_hex(4),
            "" if now is None else int(now * 1000),
        ]
        reply = await self._hit(keys=[f"tessera:rate:{subject}"], args=args)
        allowed, count, oldest, at = (int(v) for v in reply)
        reset = max(0, math.ceil((oldest + window_ms - at) / 1000))
        state = RateLimitState(limit=self.per_minute, remaining=max(0, self.per_minute - count), reset_seconds=reset)
        if not allowed:
            raise RateLimitExceeded(
                f"more than {self.per_minute} requests in the last {WINDOW_SECONDS} seconds for this key "
                "(quotas.requests_per_minute)",
                state=state,
            )
        return state
