"""Production API behaviour over the ASGI app with a real Redis: idempotency, quotas shared by two API
processes' worth of apps, rate limits, stored keys, Prefer: wait, metrics, webhook secrets, retention."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from core.config import RetentionSettings, Settings
from core.retention import sweep
from core.stores.catalog import Catalog
from core.stores.keys import ApiKeyStore
from core.stores.local import LocalObjectStore
from services.api.app import create_app
from tests.services.test_api import A, make_ready_concept, png, upload


def _settings(redis_url: str, tmp_path: Path, **overrides: object) -> Settings:
    return Settings(
        redis={"url": redis_url},
        storage={"backend": "local", "root": tmp_path / "objects", "public_base_url": "http://testserver"},
        api_keys="tenant-a:key-a,tenant-b:key-b",
        **overrides,  # type: ignore[arg-type]
    )


@pytest.fixture
def settings(redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> Settings:
    return _settings(redis_url, tmp_path)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


def _training(file_id: str, name: str = "rex") -> dict:  # type: ignore[type-arg]
    return {"concept": {"name": name, "class_word": "dog"}, "images": [file_id]}


def test_idempotency_replay_reuse_and_concurrency(client: TestClient) -> None:
    f = upload(client, png())["id"]
    headers = {**A, "Idempotency-Key": "order-1"}
    first = client.post("/v1/trainings", json=_training(f), headers=headers)
    assert first.status_code == 202 and "idempotent-replayed" not in first.headers
    replay = client.post("/v1/trainings", json=_training(f), headers=headers)
    # A replay answers the original status, marked as a replay, with the original job and its Location.
    assert replay.status_code == 202 and replay.json()["id"] == first.json()["id"]
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.headers["location"] == first.headers["location"]
    reused = client.post("/v1/trainings", json=_training(f, "other"), headers=headers)
    assert reused.status_code == 422 and reused.json()["code"] == "idempotency_key_reused"
    too_long = client.post("/v1/trainings", json=_training(f, "x2"), headers={**A, "Idempotency-Key": "k" * 256})
    assert too_long.status_code == 422

    body = {"prompt": "a <rex> on the beach", "width": 64, "height": 64}
    make_ready_concept_via_client(client)
    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(
            pool.map(
                lambda _: client.post("/v1/generations", json=body, headers={**A, "Idempotency-Key": "gen-1"}),
                range(20),
            )
        )
    codes = sorted(a.status_code for a in answers)
    ids = {a.json()["id"] for a in answers if a.status_code == 202}
    originals = [a for a in answers if a.status_code == 202 and "idempotent-replayed" not in a.headers]
    assert len(ids) == 1 and len(originals) == 1 and set(codes) <= {202, 409}
    generations = client.get("/v1/jobs?kind=generation", headers=A).json()["data"]
    assert len(generations) == 1


def make_ready_concept_via_client(client: TestClient) -> None:
    state = client.app.state.tessera  # type: ignore[attr-defined]
    make_ready_concept(state.settings, "tenant-a", "rex2")
    # The prompt above names <rex>: give tenant-a a ready concept of that name as well.
    concept = state.catalog.get_concept("tenant-a", "rex")
    concept.status, concept.adapter_bytes, concept.adapter_sha256 = "ready", 1, "0" * 64
    state.catalog.save_concept(concept)


def test_active_job_quota_holds_across_two_api_apps(redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> None:
    settings = _settings(redis_url, tmp_path, quotas={"max_active_jobs": 3})
    with TestClient(create_app(settings)) as one, TestClient(create_app(settings)) as two:
        f = upload(one, png())["id"]
        codes = [
            c.post("/v1/trainings", json=_training(f, f"c{i}"), headers=A).status_code
            for i, c in enumerate([one, two, one, two, one])
        ]
        assert codes == [202, 202, 202, 429, 429]
        over = two.post("/v1/trainings", json=_training(f, "late"), headers=A)
        assert over.json()["code"] == "quota_exceeded" and int(over.headers["retry-after"]) > 0
        # The refused training did not keep its concept name.
        assert one.get("/v1/concepts/late", headers=A).status_code == 404
        # A canceled job frees its slot.
        queued = one.get("/v1/jobs?status=queued", headers=A).json()["data"][0]
        one.post(f"/v1/jobs/{queued['id']}/cancel", headers=A)
        assert two.post("/v1/trainings", json=_training(f, "late"), headers=A).status_code == 202
        # Another tenant has its own quota.
        g = upload(one, png(), headers={"Authorization": "Bearer key-b"})["id"]
        b = one.post("/v1/trainings", json=_training(g, "bee"), headers={"Authorization": "Bearer key-b"})
        assert b.status_code == 202


def test_rate_limit_per_key_with_headers(redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> None:
    settings = _settings(redis_url, tmp_path, quotas={"requests_per_minute": 5})
    with TestClient(create_app(settings)) as one, TestClient(create_app(settings)) as two:
        responses = [(one if i % 2 else two).get("/v1/jobs", headers=A) for i in range(7)]
        assert [r.status_code for r in responses] == [200] * 5 + [429, 429]
        # Both replicas count in one window and tell the client where it stands.
        assert [int(r.headers["RateLimit-Remaining"]) for r in responses] == [4, 3, 2, 1, 0, 0, 0]
        assert all(
            r.headers["RateLimit-Limit"] == "5" and r.headers["RateLimit-Policy"] == "5;w=60" for r in responses
        )
        assert all(0 <= int(r.headers["RateLimit-Reset"]) <= 60 for r in responses)
        limited = responses[-1]
        assert limited.json()["code"] == "rate_limited" and 1 <= int(limited.headers["retry-after"]) <= 60
        assert one.get("/v1/jobs", headers={"Authorization": "Bearer key-b"}).status_code == 200
        # A route that returns its own Response (202 with Location) carries the headers too.
        assert one.get("/v1/jobs", headers={"Authorization": "Bearer key-b"}).headers["RateLimit-Remaining"] == "3"


def test_stored_keys_work_and_revocation_is_immediate(client: TestClient, redis_client: redis.Redis) -> None:
    keys = ApiKeyStore(redis_client)
    record, secret = keys.create("tenant-c")
    assert redis_client.hget("tessera:api-keys", secret) is None  # only the hash is stored
    assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    keys.revoke(record.id)
    assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {secret}"}).status_code == 401
    assert [k.id for k in keys.list("tenant-c")] == [record.id]


def test_prefer_wait_returns_202_when_not_done(client: TestClient, settings: Settings) -> None:
    make_ready_concept(settings, "tenant-a", "rex")
    started = time.monotonic()
    r = client.post(
        "/v1/generations", json={"prompt": "a <rex>", "width": 64, "height": 64}, headers={**A, "Prefer": "wait=1"}
    )
    assert r.status_code == 202 and r.headers["preference-applied"] == "wait=1"
    assert 0.9 <= time.monotonic() - started < 10


def test_webhook_targets_are_vetted_at_create(client: TestClient, settings: Settings) -> None:
    make_ready_concept(settings, "tenant-a", "rex")
    for url in ("https://127.0.0.1/hook", "http://example.com/hook", "https://169.254.169.254/latest"):
        r = client.post("/v1/generations", json={"prompt": "a <rex>", "webhook": url}, headers=A)
        assert r.status_code == 422 and r.json()["code"] == "webhook_url_forbidden", url
    assert client.get("/v1/jobs", headers=A).json()["data"] == []


def test_webhook_secret_get_and_rotate(client: TestClient) -> None:
    first = client.get("/v1/webhooks/secret", headers=A).json()["key"]
    assert first.startswith("whsec_") and client.get("/v1/webhooks/secret", headers=A).json()["key"] == first
    rotated = client.post("/v1/webhooks/secret/rotate", headers=A).json()["key"]
    assert rotated != first
    assert client.get("/v1/webhooks/secret", headers={"Authorization": "Bearer key-b"}).json()["key"] != rotated


def test_metrics_report_requests_jobs_and_queues(client: TestClient) -> None:
    f = upload(client, png())["id"]
    client.post("/v1/trainings", json=_training(f), headers=A)
    text = client.get("/metrics").text
    assert 'tessera_jobs_created_total{kind="training"} 1.0' in text
    assert 'tessera_queue_depth{queue="train"} 1.0' in text
    assert 'tessera_http_requests_total{method="POST",route="/v1/trainings",status="202"} 1.0' in text
    assert "tessera_http_request_seconds_bucket" in text and "tessera_broker_queue_length" in text


def test_retention_sweeps_expired_files(client: TestClient, settings: Settings, redis_client: redis.Redis) -> None:
    f = upload(client, png())
    got = client.get(f"/v1/files/{f['id']}", headers=A).json()
    store = LocalObjectStore(Path(settings.storage.root), url_secret=b"x", public_base_url="http://testserver")
    state = client.app.state.tessera  # type: ignore[attr-defined]
    assert sweep(Catalog(redis_client), state.objects, RetentionSettings(input_seconds=3600)) == 0
    deleted = sweep(Catalog(redis_client), state.objects, RetentionSettings(input_seconds=60), now=time.time() + 120)
    assert deleted == 1
    assert client.get(f"/v1/files/{f['id']}", headers=A).status_code == 404
    assert client.get(got["url"].removeprefix("http://testserver")).status_code == 404
    assert not store.exists(f"inputs/tenant-a/{f['id']}")
