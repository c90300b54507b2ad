"""What a worker process builds once and every task uses."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import redis

from core.config import Settings
from core.job_record import JobRecord
from core.notifier import attach_webhooks
from core.stores.catalog import Catalog
from core.stores.job_store import JobStore
from core.stores.object_factory import make_object_store
from core.stores.objects import ObjectStore
from core.stores.retrying import open_retrying
from services.worker.models import AdapterCache, ModelCache


@dataclass
class WorkerContext:
    settings: Settings
    jobs: JobStore
    catalog: Catalog
    objects: ObjectStore
    models: ModelCache
    adapters: AdapterCache
    # Sends a job's message again (a job handed back when this worker shuts down); None: nowhere to send it.
    enqueue: Callable[[JobRecord], None] | None = None
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}")

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        send_delivery: Callable[[str], None],
        enqueue: Callable[[JobRecord], None] | None = None,
        objects: ObjectStore | None = None,
    ) -> WorkerContext:
        """Everything a GPU worker process needs; job changes also become webhook deliveries."""
        client = redis.Redis.from_url(settings.redis.dsn(), socket_timeout=30, health_check_interval=30)
        # A job rides out a short object-store outage (retries with backoff) instead of failing at once.
        if objects is None:
            storage = settings.storage
            objects = open_retrying(partial(make_object_store, storage), storage.retry_delays_seconds)
        jobs = JobStore(client, ttl_seconds=settings.job_ttl_seconds, lease_seconds=settings.worker.lease_seconds)
        catalog = Catalog(client)
        attach_webhooks(client, jobs, catalog, objects, settings.storage, send_delivery)
        return cls(
            settings=settings,
            jobs=jobs,
            catalog=catalog,
            objects=objects,
            models=ModelCache(settings.models),
            adapters=AdapterCache(settings.models.adapter_cache_dir, objects),
            enqueue=enqueue,
        )
