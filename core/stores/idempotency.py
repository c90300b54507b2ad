"""Idempotency keys for create calls (IETF ``Idempotency-Key`` draft), scoped per tenant, kept 24 h.

The first request with a key claims it atomically (``SET NX``) before doing anything, so concurrent
duplicates cannot both create a job: they see the claim and answer ``409`` until the first finishes.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, cast

from redis.asyncio import Redis as AsyncRedis

from core.errors import IdempotencyConflictError, InvalidRequestError

TTL_SECONDS = 24 * 3600
MAX_KEY_LENGTH = 255


def fingerprint(method: str, path: str, body: Any) -> str:
    """A digest of what the request asks for (canonical JSON, so key order does not matter)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(f"{method} {path}\n{canonical}".encode()).hexdigest()


# Claim KEYS[1] with ARGV[1] for ARGV[2] seconds unless it is held: nil when claimed, else what it holds. One
# atomic round trip, so a claim that expires between a refused SET and its read cannot be missed.
_CLAIM = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return false end
return redis.call('GET', KEYS[1])
"""


class IdempotencyStore:
    """Claims on idempotency keys, on an asyncio client (the API's create path)."""

    def __init__(self, client: AsyncRedis) -> None:
        self._r = client
        self._claim = client.register_script(_CLAIM)

    @staticmethod
    def _key(tenant: str, key: str) -> str:
        return f"tessera:idem:{tenant}:{hashlib.sha256(key.encode()).hexdigest()}"

    @staticmethod
    def check_key(key: str) -> None:
        if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
            raise InvalidRequestError(
                f"Idempotency-Key must be 1..{MAX_KEY_LENGTH} printable characters, got {len(key)}",
                field="Idempotency-Key",
                code="invalid_idempotency_key",
            )

    async def begin(self, tenant: str, key: str, digest: str) -> str | None:
        """Claim ``key``; returns None when this request now owns it, or the job id of the original request.

        Raises ``InvalidRequestError`` (``idempotency_key_reused``) when the key was used with another body,
        and ``IdempotencyConflictError`` while the original request is still in flight.
        """
        self.check_key(key)
        held = await self._claim(keys=[self._key(tenant, key)], args=[_claim_value(digest, None), TTL_SECONDS])
        if held is None:
            return None
        stored = json.loads(cast(bytes, held))
        if stored["fp"] != digest:
            raise InvalidRequestError(
                "this Idempotency-Key was used with a different request body",
                field="Idempotency-Key",
                code="idempotency_key_reused",
            )
        if stored["job_id"] is None:
            raise IdempotencyConflictError("a request with this Idempotency-Key is still being processed; retry")
        return str(stored["job_id"])

    async def complete(self, tenant: str, key: str, digest: str, job_id: str) -> None:
        await self._r.set(self._key(tenant, key), _claim_value(digest, job_id), ex=TTL_SECONDS)

    async def abandon(self, tenant: str, key: str) -> None:
        """Release a claim whose request failed, so the client may retry with the same key."""
        await self._r.delete(self._key(tenant, key))


def _claim_value(digest: str, job_id: str | None) -> str:
    return json.dumps({"fp": digest, "job_id": job_id})
