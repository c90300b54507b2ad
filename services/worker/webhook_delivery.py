"""The webhooks worker: delivers signed events, retries `completed` ones on a schedule, logs every attempt.

It holds no model and imports no torch; run it as its own process: ``tessera worker --queues webhooks``.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
import redis
from celery import Celery

from core.config import Settings, WebhookSettings
from core.errors import InvalidRequestError
from core.stores.webhook_store import DeliveryAttempt, WebhookStore
from core.tasks import WEBHOOK_QUEUE, WEBHOOK_TASK
from core.webhook_security import Resolver, post_vetted, signed_headers, system_resolver, vet_url
from services.queue import delivery_sender

logger = logging.getLogger(__name__)


def attempt_delivery(
    store: WebhookStore,
    settings: WebhookSettings,
    delivery_id: str,
    *,
    clock: Callable[[], float] = time.time,
    jitter: Callable[[], float] = random.random,
    resolver: Resolver = system_resolver,
) -> None:
    """Send one attempt of a delivery and record its outcome (and the next retry, if any)."""
    delivery = store.get(delivery_id)
    if delivery is None or delivery.status != "pending":
        return
    delivery.attempts += 1
    status_code: int | None = None
    error: str | None = None
    started = time.perf_counter()
    try:
        # Resolve and vet again now: the name may point somewhere else than at create time (DNS rebinding).
        addresses = vet_url(
            delivery.url, allow_private=settings.allow_private, allow_http=settings.allow_http, resolver=resolver
        )
        body = delivery.body.encode()
        headers = signed_headers(store.secret(delivery.tenant), delivery.id, body)
        status_code = post_vetted(delivery.url, addresses[0], body, headers, timeout=settings.timeout_seconds)
    except InvalidRequestError as exc:
        error = exc.message
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"
    latency_ms = round((time.perf_counter() - started) * 1000, 1)
    next_retry_at = None
    if status_code is not None and 200 <= status_code < 300:
        delivery.status = "succeeded"
    elif status_code == 410:
        delivery.status = "gone"  # the receiver asked us to stop
    elif delivery.retry and delivery.attempts <= len(settings.retry_delays_seconds):
        delay = settings.retry_delays_seconds[delivery.attempts - 1] * (0.8 + 0.4 * jitter())
        due = clock() + delay
        next_retry_at = datetime.fromtimestamp(due, UTC)
        store.schedule(delivery.id, due)
    else:
        delivery.status = "failed"
    store.save(delivery)
    store.log_attempt(
        delivery.job_id,
        DeliveryAttempt(
            delivery_id=delivery.id,
            type=delivery.type,
            attempt=delivery.attempts,
            status_code=status_code,
            latency_ms=latency_ms,
            error=error,
            next_retry_at=next_retry_at,
        ),
    )
    logger.info("webhook %s attempt %d -> %s %s", delivery.id, delivery.attempts, status_code, error or "")


class RetryScheduler(threading.Thread):
    """Hands due retries back to the webhooks queue (Redis sorted set, not broker ETAs: those would be
    redelivered after the visibility timeout and hold worker memory for hours)."""

    def __init__(self, store: WebhookStore, send: Callable[[str], None], *, interval: float = 0.2) -> None:
        super().__init__(name="tessera-webhook-retries", daemon=True)
        self._store, self._send, self._interval = store, send, interval
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                for delivery_id in self._store.pop_due():
                    self._send(delivery_id)
            except Exception:
                logger.exception("webhook retry scheduling failed")

    def stop(self) -> None:
        self._stop.set()


def register_webhook_tasks(app: Celery, settings: Settings) -> RetryScheduler:
    """Register the delivery task on ``app``; returns the retry scheduler to start with the worker."""
    store = WebhookStore(redis.Redis.from_url(settings.redis.dsn(), socket_timeout=30))

    @app.task(name=WEBHOOK_TASK, queue=WEBHOOK_QUEUE, acks_late=True, time_limit=120)
    def deliver(delivery_id: str) -> None:
        attempt_delivery(store, settings.webhooks, delivery_id)

    return RetryScheduler(store, delivery_sender(app))
