"""The GPU tasks: training and generation, one at a time per process."""

from __future__ import annotations

from celery import Celery

from core.config import Settings
from core.tasks import GENERATE_QUEUE, GENERATE_TASK, TRAIN_QUEUE, TRAIN_TASK
from services.worker.context import WorkerContext
from services.worker.generation import run_generation
from services.worker.run import execute
from services.worker.training import abort_training, run_training


def register_gpu_tasks(app: Celery, ctx: WorkerContext, settings: Settings) -> None:
    """Register the training and generation tasks on ``app``."""

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
