"""Redis under the API: an outage answers 503 problems with Retry-After and service resumes after it; a Redis that
requires a password is reached with the one the settings hold."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from core.config import Settings
from services.api.app import create_app
from services.processes import Child, free_port, start_redis

A = {"Authorization": "Bearer key-a"}


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 120, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[Path, int, list[Child]]]:
    """A private redis-server this test may stop and restart on the same port (AOF on)."""
    port = free_port()
    child, _ = start_redis(tmp_path / "redis", port=port)
    children = [child]
    try:
        yield tmp_path / "redis", port, children
    finally:
        for c in children:
            c.stop()


def test_requests_during_a_redis_outage_get_503_with_retry_after_and_work_after_it(
    own_redis: tuple[Path, int, list[Child]], tmp_path: Path
) -> None:
    data_dir, port, children = own_redis
    settings = Settings(
        redis={"url": f"redis://127.0.0.1:{port}/0"},
        storage={"backend": "local", "root": tmp_path / "objects", "public_base_url": "http://testserver"},
        api_keys="tenant-a:key-a",
    )
    with TestClient(create_app(settings)) as client:
        file_id = client.post("/v1/files", files={"file": ("x.png", _png(), "image/png")}, headers=A).json()["id"]
        body = {"concept": {"name": "rex", "class_word": "dog"}, "images": [file_id]}
        # The server appends to its AOF in the background (appendfsync everysec: a write can wait up to 2 s while a
        # fsync runs); a kill right after the upload could lose its record, which is not what this test is about.
        time.sleep(2.5)
        children[0].kill()
        children[0].stop()

        for method, path, payload in [
            ("POST", "/v1/trainings", body),
            ("GET", "/v1/jobs", None),
            ("GET", "/v1/concepts", None),
        ]:
            r = client.request(method, path, json=payload, headers=A)
            assert r.status_code == 503, (path, r.status_code, r.text)
            assert r.headers["content-type"] == "application/problem+json"
            assert r.headers["Retry-After"] == "5"
            problem = r.json()
            assert problem["code"] == "redis_unavailable" and problem["status"] == 503
            assert "Traceback" not in r.text
        assert client.get("/readyz").status_code == 503

        # Back on the same port with its append-only file: the same clients reconnect by themselves.
        child, _ = start_redis(data_dir, port=port)
        children[0] = child
        r = client.post("/v1/trainings", json=body, headers=A)
        assert r.status_code == 202, r.text
        assert client.get(f"/v1/jobs/{r.json()['id']}", headers=A).json()["status"] == "queued"
        assert client.get("/readyz").status_code == 200


def test_a_redis_that_requires_a_password_is_reached_with_the_settings_password(tmp_path: Path) -> None:
    port = free_port()
    child, url = start_redis(tmp_path / "redis", port=port, persist=False, password="s3cret/with:odd@chars")
    try:
        storage = {"backend": "local", "root": tmp_path / "objects", "public_base_url": "http://testserver"}
        good = Settings(redis={"url": url, "password": "s3cret/with:odd@chars"}, storage=storage, api_keys="a:key-a")
        with TestClient(create_app(good)) as client:
            assert client.get("/readyz").status_code == 200
            file_id = client.post("/v1/files", files={"file": ("x.png", _png(), "image/png")}, headers=A).json()["id"]
            body = {"concept": {"name": "rex", "class_word": "dog"}, "images": [file_id]}
            # The job record and its queue message (Celery's own connection) both went through AUTH.
            assert client.post("/v1/trainings", json=body, headers=A).status_code == 202
        bad = Settings(redis={"url": url}, storage=storage, api_keys="a:key-a")
        with TestClient(create_app(bad)) as client:
            assert client.get("/readyz").status_code == 503
            r = client.get("/v1/jobs", headers=A)
            assert r.status_code == 503 and r.json()["code"] == "redis_unavailable"
            assert "s3cret" not in r.text
    finally:
        child.stop()


def test_the_password_goes_into_the_url_quoted_unless_the_url_has_one() -> None:
    assert Settings(redis={"url": "redis://r:6379/0"}).redis.dsn() == "redis://r:6379/0"
    assert (
        Settings(redis={"url": "redis://r:6379/0", "password": "a/b@c"}).redis.dsn() == "redis://:a%2Fb%40c@r:6379/0"
    )
    assert Settings(redis={"url": "rediss://u@r/1", "password": "p"}).redis.dsn() == "rediss://u:p@r/1"
    assert Settings(redis={"url": "redis://:inurl@r/0", "password": "p"}).redis.dsn() == "redis://:inurl@r/0"
