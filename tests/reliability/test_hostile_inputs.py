"""Every request of the hostile corpus (tests/reliability/hostile.py) is refused with a 4xx problem and a stable code,
stores nothing, and leaves the API healthy; odd but valid images are accepted."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from PIL import Image

from core.config import Settings
from services.api.app import create_app
from tests.reliability import ledger
from tests.reliability.hostile import FileCase, JsonCase, hostile_files, hostile_json, odd_but_valid_files

A = {"Authorization": "Bearer key-a"}


class Api:
    def __init__(self, client: TestClient, store: Path, r: redis.Redis, file_id: str, mask_id: str) -> None:
        self.client, self.store, self.redis, self.file_id, self.mask_id = client, store, r, file_id, mask_id

    def stored(self) -> tuple[set[Path], set[bytes]]:
        """Every object in the store and every Redis key but the rate limiter's log."""
        files = {p for p in self.store.rglob("*") if p.is_file()} if self.store.exists() else set()
        keys = {k for k in self.redis.keys("*") if not k.startswith(b"tessera:rate:")}
        return files, keys


def _png(size: tuple[int, int], mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def api(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    # A database of its own: other modules' tests on this pytest worker flush database 0 between these tests.
    redis_url = redis_url.rsplit("/", 1)[0] + "/13"
    r = redis.Redis.from_url(redis_url)
    r.flushdb()
    store = tmp_path_factory.mktemp("hostile") / "objects"
    settings = Settings(
        redis={"url": redis_url},
        storage={"backend": "local", "root": store, "public_base_url": "http://testserver"},
        api_keys="tenant-a:key-a",
        quotas={"requests_per_minute": 100_000},
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        upload = {"file": ("x.png", _png((64, 64)), "image/png")}
        file_id = client.post("/v1/files", files=upload, headers=A).json()["id"]
        # A mask whose aspect ratio is not its image's.
        mask = {"file": ("m.png", _png((32, 48), "L"), "image/png")}
        mask_id = client.post("/v1/files", files=mask, headers=A).json()["id"]
        yield Api(client, store, r, file_id, mask_id)
    r.close()


def _check_refused(api: Api, response_status: int, body: dict[str, object], text: str, code: str) -> None:
    assert 400 <= response_status < 500, (response_status, text)
    assert body.get("code") == code and body.get("status") == response_status, text
    assert "Traceback" not in text


def _healthy(api: Api) -> None:
    assert api.client.get("/readyz").status_code == 200
    assert api.client.get("/v1/jobs", headers=A).status_code == 200


@pytest.mark.parametrize("case", hostile_files(), ids=lambda c: c.name)
def test_hostile_upload_is_refused_and_stores_nothing(api: Api, case: FileCase) -> None:
    before = api.stored()
    r = api.client.post("/v1/files", files={"file": (case.filename, case.data, case.content_type)}, headers=A)
    ok = False
    try:
        _check_refused(api, r.status_code, r.json(), r.text, case.code)
        assert api.stored() == before, "a refused upload left something behind"
        _healthy(api)
        ok = True
    finally:
        ledger.record("hostile", f"file:{case.name}", ok=ok)


@pytest.mark.parametrize("case", hostile_json(), ids=lambda c: c.name)
def test_hostile_request_is_refused_and_stores_nothing(api: Api, case: JsonCase) -> None:
    before = api.stored()
    if isinstance(case.body, bytes):
        content = case.body
    else:
        content = json.dumps(case.body).replace("{file}", api.file_id).replace("{mask}", api.mask_id).encode()
    headers = {**A, "content-type": "application/json", **case.headers}
    r = api.client.request(case.method, case.path, content=content if case.method == "POST" else None, headers=headers)
    ok = False
    try:
        _check_refused(api, r.status_code, r.json(), r.text, case.code)
        assert api.stored() == before, "a refused request left something behind"
        _healthy(api)
        ok = True
    finally:
        ledger.record("hostile", f"json:{case.name}", ok=ok)


def test_the_corpus_is_large_enough() -> None:
    assert len(hostile_files()) + len(hostile_json()) >= 40


@pytest.mark.parametrize("case", odd_but_valid_files(), ids=lambda c: c.name)
def test_odd_but_valid_images_are_accepted_upright(api: Api, case: FileCase) -> None:
    r = api.client.post("/v1/files", files={"file": (case.filename, case.data, case.content_type)}, headers=A)
    assert r.status_code == 201, r.text
    got = r.json()
    if case.name == "exif-rotated-jpeg":  # 64x32 shown turned a quarter: stored upright as 32x64
        assert (got["width"], got["height"]) == (32, 64) and got["content_type"] == "image/png"
    if case.name == "wrong-content-type-claimed":  # the bytes decide, not the client's claim
        assert got["content_type"] == "image/png"
