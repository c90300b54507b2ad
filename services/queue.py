"""The job queue on Celery: settings shared by the producer (API) and the consumer (worker), and enqueueing by name.

The API sends by task name, so it never imports worker code (nor torch). It does not send a new job's message through
Celery either: it builds the message Celery would send (``task_message``) and the job store's create script pushes it
onto the broker's list with the record, in one round trip (``CeleryTaskQueue.message``).
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable
from typing import Any, cast

import redis
from celery import Celery
from celery.utils.nodenames import anon_nodename
from kombu import Queue
from kombu.transport.redis import Channel

from core.config import Settings
from core.job_record import JobRecord
from core.tasks import GPU_QUEUES, QUEUES, TASK_FOR_KIND, WEBHOOK_QUEUE, WEBHOOK_TASK, QueueMessage


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


# The embedded options of a task with no callbacks, chain or chord (the third item of a protocol 2 body).
_NO_EMBED: dict[str, None] = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def task_message(task: str, task_id: str, kwargs: dict[str, str], queue: str, *, reply_to: str = "") -> str:
    """The message ``app.send_task(task, kwargs=kwargs, task_id=task_id, queue=queue)`` stores in Redis, as JSON.

    The worker cannot tell the two apart: tests/services/test_queue.py compares them field by field and has a real
    Celery worker run one. ``reply_to`` is the sender's reply address (results are never read here).
    """
    # Layout: Celery's task protocol 2 (the task in the headers, a JSON body [args, kwargs, embed]) inside kombu's
    # Redis transport envelope (body base64, delivery_info with the anonymous exchange and the queue as routing key).
    body = json.dumps([[], kwargs, _NO_EMBED])
    envelope = {
        "body": base64.b64encode(body.encode()).decode("ascii"),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": task,
            "id": task_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": task_id,
            "parent_id": None,
            "argsrepr": "()",
            "kwargsrepr": repr(kwargs),
            "origin": anon_nodename(),
            "ignore_result": None,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
        },
        "properties": {
            "correlation_id": task_id,
            "reply_to": reply_to,
            "delivery_mode": 2,  # persistent, Celery's default
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            # The key of the message in the unacknowledged hash while a worker holds it: unique per message.
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return json.dumps(envelope)


class CeleryTaskQueue:
    """Enqueue a job: the message carries the job id only; the worker re-reads everything else.

    Calling it sends the message through Celery (re-sends and requeues of a job). ``message`` builds the same message
    for the job store's create script to push with a new job's record (``core.submissions.ScriptEnqueue``): one
    round trip instead of a second one through Celery and kombu. That needs the job store's Redis to be the broker,
    as both are ``settings.redis`` in this service.
    """

    def __init__(self, app: Celery) -> None:
        self._app = app
        # kombu prefixes every key it uses with this transport option (none is set by ``celery_config``).
        self._key_prefix = str((app.conf.broker_transport_options or {}).get("global_keyprefix", ""))

    def __call__(self, record: JobRecord) -> None:
        self._app.send_task(
            TASK_FOR_KIND[record.kind], kwargs={"job_id": record.id}, task_id=record.id, queue=record.queue
        )

    def message(self, record: JobRecord) -> QueueMessage:
        """The message of ``record`` and the list it goes on: the queue's own (priority 0 has no suffix)."""
        payload = task_message(
            TASK_FOR_KIND[record.kind],
            record.id,
            {"job_id": record.id},
            record.queue,
            reply_to=str(self._app.thread_oid),
        )
        return QueueMessage(self._key_prefix + record.queue, payload)


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
