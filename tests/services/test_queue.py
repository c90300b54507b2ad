"""A new job's queue message, pushed by the job store's create script: what Celery itself would have sent, found by
the reaper, run by a real Celery worker; and the create path over the API (one message per job, none for a refused
create or an idempotent replay, the injected-transport fallback)."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from celery import Celery
from celery.contrib.testing.worker import start_worker
from fastapi.testclient import TestClient

from core.config import Settings
from core.job_record import JobRecord, new_id
from core.resources import JobKind
from core.stores.job_store import JobStore
from core.submissions import ScriptEnqueue
from services.api.app import create_app
from services.queue import CeleryTaskQueue, broker_task_ids, celery_config, make_producer
from tests.services.test_api import A, make_ready_concept, png, upload


def _job(kind: JobKind = "generation", queue: str = "generate") -> JobRecord:
    return JobRecord(id=new_id("job"), tenant="t1", kind=kind, queue=queue, input={})


# A database of its own: a worker another test of this process left running on the session's Redis could
# otherwise consume the messages these tests push.
QUEUE_DB = 9


@pytest.fixture
def private_url(redis_url: str) -> str:
    base = redis_url.rsplit("/", 1)[0] if redis_url.count("/") > 2 else redis_url  # drop a /<db> suffix
    return f"{base}/{QUEUE_DB}"


@pytest.fixture
def redis_client(private_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(private_url)
    client.flushdb()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def settings(private_url: str, redis_client: redis.Redis, tmp_path: Path) -> Settings:
    redis_client.flushdb()  # requested for the clean database
    return Settings(
        redis={"url": private_url},
        storage={"backend": "local", "root": tmp_path / "objects", "public_base_url": "http://testserver"},
        api_keys="tenant-a:key-a",
    )


@pytest.fixture
def queue(settings: Settings) -> CeleryTaskQueue:
    return CeleryTaskQueue(make_producer(settings))


def _messages(client: redis.Redis, name: str) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in cast(list[bytes], client.lrange(name, 0, -1))]


def test_the_celery_queue_hands_its_message_to_the_create_script(queue: CeleryTaskQueue) -> None:
    assert isinstance(queue, ScriptEnqueue)
    assert not isinstance(lambda _record: None, ScriptEnqueue)


@pytest.mark.parametrize(("kind", "queue_name"), [("generation", "generate"), ("training", "train")])
def test_the_message_is_the_one_celery_sends(
    queue: CeleryTaskQueue, redis_client: redis.Redis, kind: JobKind, queue_name: str
) -> None:
    record = _job(kind, queue_name)
    queue(record)  # through Celery: app.send_task
    sent = _messages(redis_client, queue_name)
    assert len(sent) == 1
    message = queue.message(record)
    assert message.key == queue_name
    ours = json.loads(message.payload)
    # A fresh delivery tag per message; the body compared decoded (the same JSON, however it is spaced).
    tags = [m["properties"].pop("delivery_tag") for m in (sent[0], ours)]
    assert all(isinstance(tag, str) and len(tag) == 36 for tag in tags) and tags[0] != tags[1]
    bodies = [json.loads(base64.b64decode(m.pop("body"))) for m in (sent[0], ours)]
    assert (
        bodies[0]
        == bodies[1]
        == [[], {"job_id": record.id}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    )
    assert ours == sent[0]


def test_a_pushed_message_is_held_for_the_reaper_waiting_and_reserved(
    queue: CeleryTaskQueue, redis_client: redis.Redis
) -> None:
    store = JobStore(redis_client)
    waiting, reserved = _job(), _job()
    for record in (waiting, reserved):
        store.create(record, message=queue.message(record))
    assert broker_task_ids(redis_client, "generate") == {waiting.id, reserved.id}
    # A worker holding a message (acks_late) keeps it in kombu's unacknowledged hash: still held.
    raw = redis_client.rpop("generate")
    assert isinstance(raw, bytes)
    tag = json.loads(raw)["properties"]["delivery_tag"]
    redis_client.hset("unacked", tag, json.dumps([json.loads(raw), "", "generate"]))
    assert broker_task_ids(redis_client, "generate") == {waiting.id, reserved.id}
    assert broker_task_ids(redis_client, "train") == set()


@pytest.fixture
def worker_app(settings: Settings) -> Iterator[tuple[Celery, list[tuple[str, dict[str, Any]]], threading.Event]]:
    """A Celery app with the service's configuration whose generate task records what it was given."""
    app = Celery("tessera-test-worker")
    app.conf.update(celery_config(settings))
    ran: list[tuple[str, dict[str, Any]]] = []
    done = threading.Event()

    # Tasks are shared across apps by default: another test in this process that built the real worker app
    # brings its tessera.generate here at finalize, and an app keeps the first task of a name. Finalize now,
    # drop that one, and register ours eagerly.
    app.finalize()
    app.tasks.pop("tessera.generate", None)

    @app.task(name="tessera.generate", bind=True, shared=False, lazy=False)  # type: ignore[untyped-decorator]
    def generate(self: Any, **kwargs: Any) -> None:
        ran.append((self.request.id, kwargs))
        done.set()

    yield app, ran, done


def test_a_real_celery_worker_runs_the_message_the_create_script_pushed(
    worker_app: tuple[Celery, list[tuple[str, dict[str, Any]]], threading.Event],
    queue: CeleryTaskQueue,
    redis_client: redis.Redis,
) -> None:
    app, ran, done = worker_app
    record = _job()
    JobStore(redis_client).create(record, message=queue.message(record))
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=30):
        assert done.wait(30), "the worker never ran the pushed message"
    # Celery decoded it as the task it names, with the job id as its task id and its only keyword argument.
    assert ran == [(record.id, {"job_id": record.id})]
    assert redis_client.llen("generate") == 0 and redis_client.hlen("unacked") == 0  # acknowledged


# ---- over the API


def test_a_created_job_is_stored_and_queued_once_and_a_replay_queues_nothing(
    settings: Settings, redis_client: redis.Redis
) -> None:
    make_ready_concept(settings, "tenant-a", "rex")
    with TestClient(create_app(settings)) as client:
        headers = {**A, "Idempotency-Key": "order-1"}
        body = {"prompt": "a <rex> on the beach", "width": 64, "height": 64}
        first = client.post("/v1/generations", json=body, headers=headers)
        assert first.status_code == 202, first.text
        replay = client.post("/v1/generations", json=body, headers=headers)
        assert replay.status_code == 202 and replay.json()["id"] == first.json()["id"]
        assert replay.headers["Idempotent-Replayed"] == "true"
        f = upload(client, png())["id"]
        training = client.post(
            "/v1/trainings", json={"concept": {"name": "dot", "class_word": "dog"}, "images": [f]}, headers=A
        )
        assert training.status_code == 202, training.text
    [generation] = _messages(redis_client, "generate")
    assert generation["headers"]["id"] == first.json()["id"] and generation["headers"]["task"] == "tessera.generate"
    [train] = _messages(redis_client, "train")
    assert train["headers"]["id"] == training.json()["id"] and train["headers"]["task"] == "tessera.train"


def test_a_create_over_quota_pushes_no_message(settings: Settings, redis_client: redis.Redis) -> None:
    make_ready_concept(settings, "tenant-a", "rex")
    limited = settings.model_copy(update={"quotas": settings.quotas.model_copy(update={"max_active_jobs": 1})})
    with TestClient(create_app(limited)) as client:
        body = {"prompt": "a <rex>", "width": 64, "height": 64}
        assert client.post("/v1/generations", json=body, headers=A).status_code == 202
        over = client.post("/v1/generations", json=body, headers=A)
        assert over.status_code == 429 and over.json()["code"] == "quota_exceeded"
    assert redis_client.llen("generate") == 1


def test_an_injected_transport_is_called_after_the_record_is_stored(
    settings: Settings, redis_client: redis.Redis
) -> None:
    make_ready_concept(settings, "tenant-a", "rex")
    sent: list[JobRecord] = []
    jobs = JobStore(redis_client)

    def enqueue(record: JobRecord) -> None:
        assert jobs.get(record.id).status == "queued"  # the record is there before its message
        sent.append(record)

    with TestClient(create_app(settings, enqueue=enqueue)) as client:
        job = client.post("/v1/generations", json={"prompt": "a <rex>", "width": 64, "height": 64}, headers=A).json()
    assert [r.id for r in sent] == [job["id"]]
    assert redis_client.llen("generate") == 0  # nothing pushed beside it


def test_an_injected_transport_that_fails_fails_the_job_with_503(settings: Settings) -> None:
    make_ready_concept(settings, "tenant-a", "rex")

    def broken(record: JobRecord) -> None:
        raise ConnectionError("broker down")

    with TestClient(create_app(settings, enqueue=broken)) as client:
        r = client.post("/v1/generations", json={"prompt": "a <rex>", "width": 64, "height": 64}, headers=A)
        assert r.status_code == 503 and r.json()["code"] == "queue_unavailable"
        [job] = client.get("/v1/jobs", headers=A).json()["data"]
        assert job["status"] == "failed" and job["error"]["code"] == "queue_unavailable"
