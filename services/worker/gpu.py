"""The GPU tasks: training and generation, one at a time per process, plus the orphaned-job reaper."""

from __future__ import annotations

from celery import Celery

from core.config import Settings
from core.tasks import GENERATE_QUEUE, GENERATE_TASK, TRAIN_QUEUE, TRAIN_TASK
from services.queue import CeleryTaskQueue
from services.worker.context import WorkerContext
from services.worker.generation import run_generation
from services.worker.reaper import Reaper
from services.worker.run import execute
from services.worker.sweeper import Sweeper
from services.worker.training import abort_training, run_training


def register_gpu_tasks(app: Celery, ctx: WorkerContext, settings: Settings) -> list[Reaper | Sweeper]:
    """Register the training and generation tasks; returns the threads to start with the worker."""

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

    return [
        Reaper(ctx.jobs, CeleryTaskQueue(app), max_redeliveries=settings.worker.max_redeliveries),
        Sweeper(ctx.catalog, ctx.objects, settings.retention),
    ]
