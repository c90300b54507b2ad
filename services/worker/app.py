"""The worker's composition root: ``make_celery(settings, queues)`` registers the tasks those queues need.

A GPU worker (train/generate) loads the ML stack; a webhooks worker imports no torch at all.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from typing import Any

import redis
from celery import Celery
from celery.signals import worker_ready, worker_shutdown, worker_shutting_down

from core.config import Settings, get_settings
from core.stores.catalog import Catalog
from core.stores.job_store import JobStore
from core.stores.object_factory import make_object_store
from core.stores.retrying import open_retrying
from core.tasks import GPU_QUEUES, QUEUES, WEBHOOK_QUEUE
from services.queue import CeleryTaskQueue, broker_task_ids, celery_config, delivery_sender
from services.worker import metrics
from services.worker.reaper import Reaper
from services.worker.sweeper import Sweeper

logger = logging.getLogger(__name__)


class _Background:
    """Threads that live as long as the worker (reaper, retry scheduler)."""

    def __init__(self) -> None:
        self.threads: list[Any] = []

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        for thread in self.threads:
            thread.stop()


def make_celery(settings: Settings | None = None, queues: Sequence[str] = QUEUES) -> Celery:
    """A Celery app with the tasks of ``queues``, built for ``settings``."""
    settings = settings or get_settings()
    unknown = set(queues) - set(QUEUES)
    if unknown:
        raise ValueError(f"unknown queues {sorted(unknown)}; known: {', '.join(QUEUES)}")
    app = Celery("tessera-worker")
    app.conf.update(celery_config(settings))
    background = _Background()
    # Every worker, GPU or not, re-queues orphaned jobs and sweeps expired files: the webhooks worker
    # stays up when the GPU workers are scaled to zero, so a dead worker's job is never left behind.
    client = redis.Redis.from_url(settings.redis.dsn(), socket_timeout=30)
    jobs = JobStore(client, ttl_seconds=settings.job_ttl_seconds, lease_seconds=settings.worker.lease_seconds)
    background.threads.append(
        Reaper(
            jobs,
            CeleryTaskQueue(app),
            max_redeliveries=settings.worker.max_redeliveries,
            held=partial(broker_task_ids, client),
            stranded_after=settings.worker.stranded_after_seconds,
        )
    )
    objects = open_retrying(partial(make_object_store, settings.storage), settings.storage.retry_delays_seconds)
    background.threads.append(Sweeper(Catalog(client), objects, settings.retention))
    if set(queues) & set(GPU_QUEUES):
        from services.worker.context import WorkerContext
        from services.worker.gpu import register_gpu_tasks
        from services.worker.run import begin_shutdown

        ctx = WorkerContext.build(
            settings, send_delivery=delivery_sender(app), enqueue=CeleryTaskQueue(app), objects=objects
        )
        # SIGTERM (a scale-down, a rollout, a drain): the running job goes back to the queue at its next step for
        # another worker, instead of holding this process for up to the task's time limit; with "finish", Celery's
        # warm shutdown lets it end first.
        if settings.worker.on_sigterm == "hand_back":
            worker_shutting_down.connect(lambda **_: begin_shutdown(), weak=False)
        register_gpu_tasks(app, ctx, settings)
        app.tessera_context = ctx
    if WEBHOOK_QUEUE in queues:
        from services.worker.webhook_delivery import register_webhook_tasks

        background.threads.append(register_webhook_tasks(app, settings))

    @worker_ready.connect(weak=False)
    def _ready(**_: Any) -> None:
        metrics.serve(settings.worker.metrics_port, settings.worker.metrics_host)
        background.start()

    @worker_shutdown.connect(weak=False)
    def _shutdown(**_: Any) -> None:
        background.stop()

    return app
