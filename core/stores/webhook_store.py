"""Webhook state in Redis: tenant secrets, deliveries (one per event), attempt logs and the retry schedule.

Keys (prefix ``tessera:``): ``tenant:{t}:webhook-secret``, ``delivery:{id}`` (JSON), ``job:{id}:deliveries``
(list of attempts, oldest first), ``webhooks:due`` (sorted set of delivery ids by due time).
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Literal, cast

import redis
from pydantic import BaseModel, Field

from core.job_record import utcnow
from core.webhook_security import new_secret

PREFIX = "tessera:"
DELIVERY_TTL_SECONDS = 4 * 24 * 3600


class Delivery(BaseModel):
    """One event for one receiver; every attempt sends the same ``body`` under the same ``id``."""

    id: str
    job_id: str
    tenant: str
    url: str
    type: str
    body: str
    attempts: int = 0
    status: Literal["pending", "succeeded", "failed", "gone"] = "pending"
    retry: bool = False  # only `completed` events are retried (at-least-once)


class DeliveryAttempt(BaseModel):
    delivery_id: str
    type: str
    attempt: int
    status_code: int | None
    latency_ms: float | None
    error: str | None = None
    at: datetime = Field(default_factory=utcnow)
    next_retry_at: datetime | None = None


class WebhookStore:
    def __init__(self, client: redis.Redis) -> None:
        self._r = client
        # Claim due deliveries atomically, so two schedulers never send the same retry.
        self._pop_due = client.register_script(
            "local ids = redis.call('zrangebyscore', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2]) "
            "for _, id in ipairs(ids) do redis.call('zrem', KEYS[1], id) end return ids"
        )

    # ---- secrets
    def secret(self, tenant: str) -> str:
        """The tenant's signing secret, created on first use."""
        key = f"{PREFIX}tenant:{tenant}:webhook-secret"
        self._r.set(key, new_secret(), nx=True)
        return cast(bytes, self._r.get(key)).decode()

    def rotate_secret(self, tenant: str) -> str:
        secret = new_secret()
        self._r.set(f"{PREFIX}tenant:{tenant}:webhook-secret", secret)
        return secret

    # ---- deliveries
    def save(self, delivery: Delivery) -> None:
        self._r.set(f"{PREFIX}delivery:{delivery.id}", delivery.model_dump_json(), ex=DELIVERY_TTL_SECONDS)

    def get(self, delivery_id: str) -> Delivery | None:
        raw = self._r.get(f"{PREFIX}delivery:{delivery_id}")
        return None if raw is None else Delivery.model_validate_json(raw)

    def log_attempt(self, job_id: str, attempt: DeliveryAttempt) -> None:
        key = f"{PREFIX}job:{job_id}:deliveries"
        with self._r.pipeline() as pipe:
            pipe.rpush(key, attempt.model_dump_json())
            pipe.expire(key, DELIVERY_TTL_SECONDS)
            pipe.execute()

    def attempts(self, job_id: str) -> list[DeliveryAttempt]:
        raw = cast(list[bytes], self._r.lrange(f"{PREFIX}job:{job_id}:deliveries", 0, -1))
        return [DeliveryAttempt.model_validate_json(r) for r in raw]

    # ---- retry schedule
    def schedule(self, delivery_id: str, due: float) -> None:
        self._r.zadd(f"{PREFIX}webhooks:due", {delivery_id: due})

    def pop_due(self, *, now: float | None = None, limit: int = 100) -> list[str]:
        ids = self._pop_due(keys=[f"{PREFIX}webhooks:due"], args=[now or time.time(), limit])
        return [i.decode() for i in cast(list[bytes], ids)]
