"""Turns job changes into webhook deliveries: filter by the job's events, throttle progress, sign nothing yet.

Deliveries are recorded in Redis and their ids handed to ``enqueue`` (the webhooks queue); the body is
rendered once, here, so every retry sends the same bytes under the same ``webhook-id``.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable

import redis

from core.config import StorageSettings
from core.job_record import JobRecord, utcnow
from core.presenter import Presenter
from core.stores import job_keys
from core.stores.catalog import Catalog
from core.stores.job_store import JobStore
from core.stores.objects import ObjectStore
from core.stores.webhook_store import Delivery, WebhookStore

EVENT_TYPES = {"start": "job.started", "progress": "job.progress", "completed": "job.completed"}
DEFAULT_FILTER = ("completed",)
PROGRESS_INTERVAL_MS = 1000


class WebhookNotifier:
    """A ``JobStore`` listener: one delivery per (job, event) the job's webhook asked for."""

    def __init__(
        self,
        client: redis.Redis,
        jobs: JobStore,
        webhooks: WebhookStore,
        presenter: Presenter,
        enqueue: Callable[[str], None],
    ) -> None:
        self._r, self._jobs, self._webhooks = client, jobs, webhooks
        self._presenter, self._enqueue = presenter, enqueue

    def __call__(self, record: JobRecord | None, job_id: str, event: str) -> None:
        if event not in EVENT_TYPES:
            return
        if event == "progress":
            # At most one progress event per second per job, across every worker process.
            if not self._r.set(job_keys.progress_hook(job_id), "1", nx=True, px=PROGRESS_INTERVAL_MS):
                return
            record = self._jobs.get(job_id)
        if record is None:
            return
        url = record.input.get("webhook")
        wanted = record.input.get("webhook_events_filter") or DEFAULT_FILTER
        if not url or event not in wanted:
            return
        body = {
            "type": EVENT_TYPES[event],
            "timestamp": utcnow().isoformat(),
            "data": self._presenter.job(record).model_dump(mode="json"),
        }
        delivery = Delivery(
            id=f"msg_{secrets.token_hex(12)}",
            job_id=record.id,
            tenant=record.tenant,
            url=url,
            type=EVENT_TYPES[event],
            body=json.dumps(body, separators=(",", ":")),
            retry=event == "completed",
        )
        self._webhooks.save(delivery)
        self._enqueue(delivery.id)


def attach_webhooks(
    client: redis.Redis,
    jobs: JobStore,
    catalog: Catalog,
    objects: ObjectStore,
    storage: StorageSettings,
    send: Callable[[str], None],
) -> Presenter:
    """Make every change of ``jobs`` send the webhooks its job asked for; returns the presenter used for bodies."""
    presenter = Presenter(
        jobs=jobs,
        catalog=catalog,
        objects=objects,
        public_base_url=storage.public_base_url,
        url_expiry_seconds=storage.url_expiry_seconds,
    )
    jobs.listeners.append(WebhookNotifier(client, jobs, WebhookStore(client), presenter, send))
    return presenter
