"""The job queue on Celery: settings shared by the producer (API) and the consumer (worker), and enqueueing by name.

The API sends by task name, so it never imports worker code (nor torch)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, cast

import redis
from celery import Celery
from kombu import Queue
from kombu.transport.redis import Channel

from core.config import Settings
from core.jobs import JobRecord
from core.tasks import GPU_QUEUES, QUEUES, TASK_FOR_KIND, WEBHOOK_QUEUE, WEBHOOK_TASK


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery configuration for GPU work on a Redis broker."""
    longest = max(settings.worker.train_time_limit_seconds, settings.worker.generate_time_limit_seconds)
    return {
        "broker_url": settings.redis.dsn(),
        # Our Redis job record is the source of truth; Celery's result backend is never read.
        "result_backend": None,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_queues": [Queue(q, routing_key=q) for q in QUEUES],
        "task_create_missing_queues": False,
        "task_default_queue": GPU_QUEUES[0],
        # One GPU job at a time per process, acknowledged only when finished: a worker that dies
        # mid-job leaves the message to be delivered again.
        "worker_prefetch_multiplier": 1,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # An unacknowledged message reappears only after this long: it must exceed the longest job.
        "broker_transport_options": {
            "visibility_timeout": max(settings.worker.visibility_timeout_seconds, longest + 60)
        },
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "task_send_sent_event": False,
    }


def make_producer(settings: Settings) -> Celery:
    """A Celery app used only to send messages (no task modules, no torch)."""
    app = Celery("tessera-api")
    app.conf.update(celery_config(settings))
    return app


class CeleryTaskQueue:
    """Enqueue a job: the message carries the job id only; the worker re-reads everything else."""

    def __init__(self, app: Celery) -> None:
        self._app = app

    def __call__(self, record: JobRecord) -> None:
        self._app.send_task(
            TASK_FOR_KIND[record.kind], kwargs={"job_id": record.id}, task_id=record.id, queue=record.queue
        )


def delivery_sender(app: Celery) -> Callable[[str], None]:
    """Enqueue one webhook delivery attempt by id on the webhooks queue."""

    def send(delivery_id: str) -> None:
        app.send_task(WEBHOOK_TASK, kwargs={"delivery_id": delivery_id}, queue=WEBHOOK_QUEUE)

    return send


def broker_task_ids(client: redis.Redis, queue: str) -> set[str]:
    """Ids of the task messages the broker holds for ``queue``: waiting, or reserved by a worker and not yet
    acknowledged (a job's task id is its job id).

    Reads kombu's Redis transport layout (its ``Channel`` names it): a list per queue and priority
    (``<queue>``, ``<queue><sep><priority>``) of JSON messages, and one hash of unacknowledged messages, each JSON
    ``[message, exchange, routing_key]``. The job store is the source of truth; this tells the reaper which queued
    jobs have no message left to run them (``services.worker.reaper.resend_stranded``).
    """
    lists = [queue] + [f"{queue}{Channel.sep}{p}" for p in Channel.priority_steps if p]
    ids: set[str] = set()
    with client.pipeline(transaction=False) as pipe:
        for name in lists:
            pipe.lrange(name, 0, -1)
        pipe.hvals(Channel.unacked_key)
        *waiting, unacked = pipe.execute()
    for raw in (m for messages in waiting for m in cast(list[bytes], messages)):
        ids.add(_task_id(json.loads(raw)))
    for raw in cast(list[bytes], unacked):
        message, _exchange, routing_key = json.loads(raw)
        if routing_key == queue:
            ids.add(_task_id(message))
    ids.discard("")
    return ids


def _task_id(message: dict[str, Any]) -> str:
    return str((message.get("headers") or {}).get("id") or "")
