"""What the API process builds once at start-up and every route reads from ``app.state``."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from redis.asyncio import Redis as AsyncRedis

from core.config import Settings
from core.presenter import Presenter
from core.stores.catalog import Catalog
from core.stores.idempotency import IdempotencyStore
from core.stores.jobs import JobStore
from core.stores.keys import ApiKeyStore
from core.stores.limits import RateLimiter
from core.stores.objects import ObjectStore
from core.stores.webhooks import WebhookStore
from core.submissions import Enqueue, Policy


@dataclass
class ApiState:
    settings: Settings
    redis: redis.Redis
    aredis: AsyncRedis
    jobs: JobStore
    catalog: Catalog
    objects: ObjectStore
    enqueue: Enqueue
    tenant_by_key: dict[str, str]
    presenter: Presenter
    keys: ApiKeyStore
    rate_limiter: RateLimiter
    webhooks: WebhookStore
    idempotency: IdempotencyStore
    policy: Policy
