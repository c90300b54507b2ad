"""The worker's composition root: ``make_celery(settings)`` registers the tasks on a configured app."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.signals import worker_ready, worker_shutdown

from core.config import Settings, get_settings
from core.tasks import GENERATE_QUEUE, GENERATE_TASK, TRAIN_QUEUE, TRAIN_TASK
from services.queue import CeleryTaskQueue, celery_config
from services.worker.context import WorkerContext
from services.worker.generation import run_generation
from services.worker.reaper import Reaper
from services.worker.run import execute
from services.worker.training import abort_training, run_training

logger = logging.getLogger(__name__)


def make_celery(settings: Settings | None = None) -> Celery:
    """A Celery app with the training and generation tasks, built for ``settings``."""
    settings = settings or get_settings()
    app = Celery("tessera-worker")
    app.conf.update(celery_config(settings))
    ctx = WorkerContext.build(settings)
    enqueue = CeleryTaskQueue(app)
    reaper = Reaper(ctx.jobs, enqueue, max_redeliveries=settings.worker.max_redeliveries)

    # Task bodies live in services.worker.{training,generation}; these wrappers only bind the context.
    @app.task(name=TRAIN_TASK, queue=TRAIN_QUEUE, acks_late=True, time_limit=settings.worker.train_time_limit_seconds)
    def train(job_id: str) -> None:
        execute(ctx, job_id, run_training, on_abort=lambda record: abort_training(ctx, record))

    @app.task(
        name=GENERATE_TASK,
        queue=GENERATE_QUEUE,
        acks_late=True,
        time_limit=settings.worker.generate_time_limit_seconds,
    )
    def generate(job_id: str) -> None:
        execute(ctx, job_id, run_generation)

    @worker_ready.connect(weak=False)
    def _start_reaper(**_: Any) -> None:
        reaper.start()

    @worker_shutdown.connect(weak=False)
    def _stop_reaper(**_: Any) -> None:
        reaper.stop()

    app.tessera_context = ctx
    return app
