"""The job event stream (SSE) outlives a quiet spell longer than the Redis client's read timeout."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from PIL import Image

from core.config import Settings
from services.api.app import create_app

A = {"Authorization": "Bearer key-a"}
# Longer than redis-py's default socket timeout (5 s): one blocking read this long used to end the stream.
KEEPALIVE_S = 6.0


@pytest.fixture
def client(redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        redis={"url": redis_url},
        storage={"backend": "local", "root": tmp_path / "objects", "public_base_url": "http://testserver"},
        api_keys="tenant-a:key-a",
        events_keepalive_seconds=KEEPALIVE_S,
    )
    with TestClient(create_app(settings)) as c:
        yield c


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_quiet_stream_sends_keep_alives_instead_of_ending(client: TestClient) -> None:
    upload = client.post("/v1/files", files={"file": ("x.png", _png(), "image/png")}, headers=A)
    body = {"concept": {"name": "quiet", "class_word": "dog"}, "images": [upload.json()["id"]]}
    # No worker runs here: the job stays queued and its stream has nothing to say after the first event.
    job = client.post("/v1/trainings", json=body, headers=A).json()
    started = time.monotonic()
    seen: list[str] = []
    with client.stream("GET", f"/v1/jobs/{job['id']}/events", headers=A) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data:"):
                seen.append(json.loads(line[5:])["status"])
            elif line.startswith(":"):
                seen.append(line)
                break
    waited = time.monotonic() - started
    assert seen == ["queued", ": keep-alive"], seen
    # Keep-alives follow the setting, not the length of one Redis read.
    assert KEEPALIVE_S - 0.5 <= waited < KEEPALIVE_S + 3, waited
