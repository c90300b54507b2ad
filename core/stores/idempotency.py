"""Idempotency keys for create calls (IETF ``Idempotency-Key`` draft), scoped per tenant, kept 24 h.

The first request with a key claims it atomically (``SET NX``) before doing anything, so concurrent
duplicates cannot both create a job: they see the claim and answer ``409`` until the first finishes.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import redis

from core.errors import IdempotencyConflictError, InvalidRequestError

TTL_SECONDS = 24 * 3600
MAX_KEY_LENGTH = 255


def fingerprint(method: str, path: str, body: Any) -> str:
    """A digest of what the request asks for (canonical JSON, so key order does not matter)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(f"{method} {path}\n{canonical}".encode()).hexdigest()


class IdempotencyStore:
    def __init__(self, client: redis.Redis) -> None:
        self._r = client

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

    def begin(self, tenant: str, key: str, digest: str) -> str | None:
        """Claim ``key``; returns None when this request now owns it, or the job id of the original request.

        Raises ``InvalidRequestError`` (``idempotency_key_reused``) when the key was used with another body,
        and ``IdempotencyConflictError`` while the original request is still in flight.
        """
        self.check_key(key)
        redis_key = self._key(tenant, key)
        if self._r.set(redis_key, json.dumps({"fp": digest, "job_id": None}), nx=True, ex=TTL_SECONDS):
            return None
        raw = self._r.get(redis_key)
        if raw is None:  # expired between the two calls: claim again
            return self.begin(tenant, key, digest)
        stored = json.loads(raw)
        if stored["fp"] != digest:
            raise InvalidRequestError(
                "this Idempotency-Key was used with a different request body",
                field="Idempotency-Key",
                code="idempotency_key_reused",
            )
        if stored["job_id"] is None:
            raise IdempotencyConflictError("a request with this Idempotency-Key is still being processed; retry")
        return str(stored["job_id"])

    def complete(self, tenant: str, key: str, digest: str, job_id: str) -> None:
        self._r.set(self._key(tenant, key), json.dumps({"fp": digest, "job_id": job_id}), ex=TTL_SECONDS)

    def abandon(self, tenant: str, key: str) -> None:
        """Release a claim whose request failed, so the client may retry with the same key."""
        self._r.delete(self._key(tenant, key))
