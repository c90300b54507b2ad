"""The API over its ASGI interface with a real Redis, a real local object store and a real Celery producer.

What a worker does is covered by tests/integration; here: validation, auth, tenancy, and that bad input
stores nothing.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from PIL import Image

from core.config import PRESET_GENERATION_DEFAULTS, PRESET_TRAINING_DEFAULTS, Settings
from core.stores.catalog import Catalog, ConceptRecord
from services.api.app import create_app

KEY_A, KEY_B = "key-a", "key-b"
A = {"Authorization": f"Bearer {KEY_A}"}
B = {"Authorization": f"Bearer {KEY_B}"}


def png(size: tuple[int, int] = (64, 64), color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def bomb_png(side: int = 60_000) -> bytes:
    """A valid-looking PNG whose header claims side×side pixels; its payload is tiny."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1024))
        + chunk(b"IEND", b"")
    )


@pytest.fixture
def settings(redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> Settings:
    redis_client.flushdb()  # requested for the clean database, not used further
    return Settings(
        redis={"url": redis_url},
        storage={"backend": "local", "root": tmp_path / "objects", "public_base_url": "http://testserver"},
        api_keys=f"tenant-a:{KEY_A},tenant-b:{KEY_B}",
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


def stored_objects(settings: Settings) -> list[Path]:
    root = Path(settings.storage.root)
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def upload(client: TestClient, data: bytes, headers: dict[str, str] = A) -> dict:  # type: ignore[type-arg]
    r = client.post("/v1/files", files={"file": ("x.png", data, "image/png")}, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def make_ready_concept(settings: Settings, tenant: str, name: str) -> None:
    catalog = Catalog(redis.Redis.from_url(settings.redis.url))
    catalog.reserve_concept(
        ConceptRecord(
            id=f"cpt_{name}",
            tenant=tenant,
            name=name,
            class_word="dog",
            training_job_id="job_x",
            status="ready",
            adapter_bytes=1,
            adapter_sha256="0" * 64,
            adapter_format="tessera.edlora",
        )
    )


def test_auth_missing_and_wrong_key(client: TestClient) -> None:
    r = client.get("/v1/jobs")
    assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "missing_api_key"
    r = client.get("/v1/jobs", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and r.json()["code"] == "invalid_api_key"


def test_upload_then_get_with_signed_url(client: TestClient) -> None:
    f = upload(client, png((80, 48)))
    assert f["id"].startswith("file_") and (f["width"], f["height"]) == (80, 48)
    got = client.get(f"/v1/files/{f['id']}", headers=A).json()
    assert got["url"].startswith("http://testserver/v1/objects/")
    path = got["url"].removeprefix("http://testserver")
    r = client.get(path)
    assert r.status_code == 200 and r.content.startswith(b"\x89PNG")
    tampered = path.replace("signature=", "signature=0")
    assert client.get(tampered).status_code == 403


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b"definitely not an image", 415, "unsupported_media_type"),
        (png()[:-30], 422, "invalid_image"),
        (bomb_png(), 422, "image_too_large"),
    ],
    ids=["not-an-image", "truncated-png", "decompression-bomb"],
)
def test_bad_uploads_store_nothing(
    client: TestClient, settings: Settings, data: bytes, status: int, code: str
) -> None:
    r = client.post("/v1/files", files={"file": ("x.png", data, "image/png")}, headers=A)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["code"] == code and body["status"] == status and "Traceback" not in r.text
    assert stored_objects(settings) == []


def test_too_many_bytes_is_413(settings: Settings) -> None:
    small = settings.model_copy(update={"limits": settings.limits.model_copy(update={"max_file_bytes": 100})})
    with TestClient(create_app(small)) as c:
        r = c.post("/v1/files", files={"file": ("x.png", png(), "image/png")}, headers=A)
    assert r.status_code == 413 and r.json()["code"] == "file_too_large"
    assert "100" in r.json()["detail"]


def test_other_tenants_objects_are_404(client: TestClient) -> None:
    f = upload(client, png())
    assert client.get(f"/v1/files/{f['id']}", headers=B).status_code == 404
    assert client.delete(f"/v1/files/{f['id']}", headers=B).status_code == 404
    job = client.post(
        "/v1/trainings", json={"concept": {"name": "rex", "class_word": "dog"}, "images": [f["id"]]}, headers=A
    ).json()
    assert client.get(f"/v1/jobs/{job['id']}", headers=B).status_code == 404
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=B).status_code == 404
    assert client.get("/v1/concepts/rex", headers=B).status_code == 404
    assert client.get("/v1/jobs", headers=B).json()["data"] == []


def test_training_with_another_tenants_file_is_refused(client: TestClient) -> None:
    f = upload(client, png(), headers=B)
    r = client.post(
        "/v1/trainings", json={"concept": {"name": "rex", "class_word": "dog"}, "images": [f["id"]]}, headers=A
    )
    assert r.status_code == 422 and r.json()["code"] == "unknown_file"
    assert r.json()["errors"][0]["field"] == "images[0]"
    assert client.get("/v1/concepts/rex", headers=A).status_code == 404
    assert client.get("/v1/jobs", headers=A).json()["data"] == []


def test_training_validation_names_the_field(client: TestClient) -> None:
    f = upload(client, png())
    cases = [
        ({"concept": {"name": "rex", "class_word": "dog"}, "images": []}, "images"),
        ({"concept": {"name": "Rex!", "class_word": "dog"}, "images": [f["id"]]}, "concept.name"),
        (
            {"concept": {"name": "rex", "class_word": "dog"}, "images": [f["id"]], "options": {"rank": 500}},
            "options.rank",
        ),
        ({"concept": {"name": "rex", "class_word": "dog"}, "images": [f["id"]], "options": {"lr": 1}}, "options.lr"),
    ]
    for body, field in cases:
        r = client.post("/v1/trainings", json=body, headers=A)
        assert r.status_code == 422, (body, r.text)
        assert field in [e["field"] for e in r.json()["errors"]], r.json()


def test_training_creates_queued_job_and_concept(client: TestClient) -> None:
    files = [upload(client, png())["id"] for _ in range(3)]
    r = client.post(
        "/v1/trainings",
        json={"concept": {"name": "rex", "class_word": "dog"}, "images": files, "metadata": {"order": 7}},
        headers=A,
    )
    assert r.status_code == 202 and r.headers["location"] == f"/v1/jobs/{r.json()['id']}"
    job = r.json()
    assert job["status"] == "queued" and job["kind"] == "training" and job["queue_position"] >= 1
    assert job["metadata"] == {"order": 7} and job["input"]["options"]["max_train_steps"] == 500
    concept = client.get("/v1/concepts/rex", headers=A).json()
    assert concept["status"] == "training" and concept["training_job_id"] == job["id"]
    again = client.post(
        "/v1/trainings", json={"concept": {"name": "rex", "class_word": "dog"}, "images": files}, headers=A
    )
    assert again.status_code == 409 and again.json()["code"] == "concept_name_taken"
    # Cancel while queued: at once, and idempotent.
    canceled = client.post(f"/v1/jobs/{job['id']}/cancel", headers=A).json()
    assert canceled["status"] == "canceled"
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=A).json()["status"] == "canceled"
    assert client.get("/v1/concepts/rex", headers=A).json()["status"] == "failed"


@pytest.mark.parametrize(
    ("body", "field", "code"),
    [
        ({"prompt": "a <ghost> on the beach"}, "prompt", "unknown_concept"),
        ({"prompt": "a <rex>", "width": 100}, "width", "validation_error"),
        ({"prompt": "a <rex>", "num_inference_steps": 0}, "num_inference_steps", "validation_error"),
        ({"prompt": "a <rex>", "style": {"image": "file_nope"}}, "style.image", "unknown_file"),
        ({"prompt": "a <rex>", "control": {"type": "depth"}}, "control", "invalid_request"),
        ({"prompt": "a <rex>", "concepts": [{"concept": "ghost"}]}, "concepts[0].concept", "unknown_concept"),
    ],
    ids=[
        "unknown-concept",
        "width-not-multiple-of-8",
        "zero-steps",
        "style-file-unknown",
        "control-without-style",
        "unknown-in-concepts",
    ],
)
def test_generation_validation(client: TestClient, settings: Settings, body: dict, field: str, code: str) -> None:  # type: ignore[type-arg]
    make_ready_concept(settings, "tenant-a", "rex")
    r = client.post("/v1/generations", json=body, headers=A)
    assert r.status_code == 422, r.text
    assert r.json()["code"] == code
    assert field in [e["field"] for e in r.json()["errors"]]
    assert client.get("/v1/jobs", headers=A).json()["data"] == []


def test_style_on_a_preset_without_styling_weights_is_refused_before_queueing(settings: Settings) -> None:
    shapes = settings.model_copy(update={"models": settings.models.model_copy(update={"preset": "shapes"})})
    make_ready_concept(settings, "tenant-a", "rex")
    with TestClient(create_app(shapes)) as client:
        style = upload(client, png())["id"]
        r = client.post("/v1/generations", json={"prompt": "a <rex>", "style": {"image": style}}, headers=A)
        assert r.status_code == 422, r.text
        assert r.json()["errors"][0]["field"] == "style" and "'shapes'" in r.json()["detail"]
        assert client.get("/v1/jobs", headers=A).json()["data"] == []
        assert client.post("/v1/generations", json={"prompt": "a <rex>"}, headers=A).status_code == 202


def test_generation_of_other_tenants_concept_is_unknown(client: TestClient, settings: Settings) -> None:
    make_ready_concept(settings, "tenant-b", "rex")
    r = client.post("/v1/generations", json={"prompt": "a <rex>"}, headers=A)
    assert r.status_code == 422 and r.json()["code"] == "unknown_concept"


def test_generation_accepted_records_the_seed(client: TestClient, settings: Settings) -> None:
    make_ready_concept(settings, "tenant-a", "rex")
    job = client.post(
        "/v1/generations", json={"prompt": "a <rex> on the beach", "width": 64, "height": 64}, headers=A
    ).json()
    assert job["status"] == "queued" and isinstance(job["input"]["seed"], int)
    listed = client.get("/v1/jobs?kind=generation", headers=A).json()["data"]
    assert [j["id"] for j in listed] == [job["id"]]
    assert client.get("/v1/jobs?limit=0", headers=A).status_code == 422


def test_health_ready_and_request_id(client: TestClient) -> None:
    assert client.get("/healthz").status_code == 200
    r = client.get("/readyz", headers={"X-Request-ID": "abc"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "abc"


def test_readyz_names_what_is_down(settings: Settings) -> None:
    broken = settings.model_copy(update={"redis": settings.redis.model_copy(update={"url": "redis://127.0.0.1:1/0"})})
    with TestClient(create_app(broken, enqueue=lambda _record: None)) as c:
        r = c.get("/readyz")
    assert r.status_code == 503 and "redis" in r.json()["down"]


def test_openapi_lists_the_endpoints(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in (
        "/v1/files",
        "/v1/files/{file_id}",
        "/v1/trainings",
        "/v1/generations",
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/cancel",
        "/v1/concepts",
        "/v1/concepts/{ref}",
    ):
        assert path in paths


@pytest.mark.parametrize("preset", ["shapes", "sd15", "tiny"])
def test_generation_left_to_defaults_gets_the_presets_sampling(settings: Settings, preset: str) -> None:
    chosen = settings.model_copy(update={"models": settings.models.model_copy(update={"preset": preset})})
    make_ready_concept(settings, "tenant-a", "rex")
    expected = PRESET_GENERATION_DEFAULTS[preset]
    with TestClient(create_app(chosen)) as client:
        job = client.post("/v1/generations", json={"prompt": "a <rex>"}, headers=A).json()
        given = client.post(
            "/v1/generations",
            json={
                "prompt": "a <rex>",
                "num_inference_steps": 7,
                "width": 128,
                "concepts": [{"concept": "rex"}, {"concept": "rex", "weight": 1.25}],
            },
            headers=A,
        ).json()
    recorded = {k: job["input"][k] for k in ("width", "height", "num_inference_steps", "guidance_scale")}
    assert recorded == expected.model_dump(exclude={"lora_weight"})
    assert given["input"]["num_inference_steps"] == 7 and given["input"]["width"] == 128
    assert given["input"]["guidance_scale"] == expected.guidance_scale
    # A concept use without a weight records the preset's; a given weight is kept.
    assert [use["weight"] for use in given["input"]["concepts"]] == [expected.lora_weight, 1.25]


@pytest.mark.parametrize(("preset", "expected"), [("shapes", 0.1), ("sd15", 1.0), ("tiny", 1.0)])
def test_training_left_to_defaults_gets_the_presets_separation_weight(
    settings: Settings, preset: str, expected: float
) -> None:
    chosen = settings.model_copy(update={"models": settings.models.model_copy(update={"preset": preset})})
    with TestClient(create_app(chosen)) as client:
        files = [upload(client, png())["id"] for _ in range(2)]

        def train(name: str, options: dict[str, object]) -> dict[str, object]:
            body = {"concept": {"name": name, "class_word": "dog"}, "images": files, "options": options}
            r = client.post("/v1/trainings", json=body, headers=A)
            assert r.status_code == 202, r.text
            return r.json()["input"]["options"]  # type: ignore[no-any-return]

        left_out = train("rex", {"max_train_steps": 7})
        given = train("max", {"separation_loss_weight": 1.0})
    # The job records the weight it trains with; a weight the request gives is kept.
    assert left_out["separation_loss_weight"] == expected and left_out["max_train_steps"] == 7
    assert given["separation_loss_weight"] == 1.0


def test_shapes_defaults_are_the_ones_its_preset_declares() -> None:
    declared = json.loads((Path(__file__).parents[2] / "core/ml/presets/shapes/preset.json").read_text())
    defaults = PRESET_GENERATION_DEFAULTS["shapes"]
    assert (defaults.num_inference_steps, defaults.guidance_scale, defaults.lora_weight) == (
        declared["recommended_steps"],
        declared["recommended_guidance_scale"],
        declared["recommended_lora_weight"],
    )
    assert defaults.width == defaults.height == declared["resolution"]
    training = PRESET_TRAINING_DEFAULTS["shapes"]
    assert training.separation_loss_weight == declared["recommended_separation_loss_weight"]
