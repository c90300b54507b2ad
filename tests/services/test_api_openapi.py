"""The OpenAPI document as a generator sees it (valid, examples, problem schema, per-operation errors, stable
operationIds, typed job output), the documentation pages served without a CDN, and the URLs the API hands out."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import uvicorn
from fastapi.testclient import TestClient
from openapi_spec_validator import validate

from core.config import Settings
from core.job_record import JobRecord
from core.resources import GenerationOutput, Job, TrainingOutput
from core.stores.job_store import JobStore
from services.api.app import create_app
from services.api.routes.docs import STATIC
from tests.services.test_api import png

KEY = "key-a"
AUTH = {"Authorization": f"Bearer {KEY}"}

OPERATION_IDS = {
    ("post", "/v1/files"): "upload_file",
    ("get", "/v1/files/{file_id}"): "get_file",
    ("delete", "/v1/files/{file_id}"): "delete_file",
    ("post", "/v1/trainings"): "create_training_job",
    ("post", "/v1/generations"): "create_generation_job",
    ("get", "/v1/jobs"): "list_jobs",
    ("get", "/v1/jobs/{job_id}"): "get_job",
    ("post", "/v1/jobs/{job_id}/cancel"): "cancel_job",
    ("get", "/v1/jobs/{job_id}/webhook_deliveries"): "list_webhook_deliveries",
    ("get", "/v1/jobs/{job_id}/events"): "stream_job_events",
    ("get", "/v1/concepts"): "list_concepts",
    ("get", "/v1/concepts/{ref}"): "get_concept",
    ("delete", "/v1/concepts/{ref}"): "delete_concept",
    ("get", "/v1/webhooks/secret"): "get_webhook_secret",
    ("post", "/v1/webhooks/secret/rotate"): "rotate_webhook_secret",
    ("get", "/v1/objects/{key}"): "get_signed_object",
    ("get", "/healthz"): "get_health",
    ("get", "/readyz"): "get_readiness",
}


def _settings(redis_url: str, root: Path, **storage: Any) -> Settings:
    return Settings(
        redis={"url": redis_url},
        storage={"backend": "local", "root": root, **storage},
        api_keys=f"tenant-a:{KEY}",
    )


@pytest.fixture
def client(redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> Iterator[TestClient]:
    redis_client.flushdb()
    settings = _settings(redis_url, tmp_path / "objects", public_base_url="http://testserver")
    with TestClient(create_app(settings, enqueue=lambda _record: None)) as c:
        yield c


@pytest.fixture
def document(client: TestClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    return response.json()  # type: ignore[no-any-return]


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, ops in document["paths"].items():
        for method, op in ops.items():
            yield method, path, op


def test_document_is_valid_openapi(document: dict[str, Any]) -> None:
    validate(document)


def test_document_fails_validation_when_broken(document: dict[str, Any]) -> None:
    """The validator is not a formality: a dangling reference is refused."""
    broken = json.loads(json.dumps(document))
    broken["paths"]["/v1/files"]["post"]["responses"]["201"]["content"]["application/json"]["schema"] = {
        "$ref": "#/components/schemas/NoSuchThing"
    }
    with pytest.raises(Exception, match="NoSuchThing"):
        validate(broken)


def test_operation_ids_are_stable(document: dict[str, Any]) -> None:
    found = {(method, path): op["operationId"] for method, path, op in _operations(document)}
    assert found == OPERATION_IDS


def test_every_request_body_has_an_example(document: dict[str, Any]) -> None:
    for method, path, op in _operations(document):
        for media, content in op.get("requestBody", {}).get("content", {}).items():
            assert content.get("examples") or content.get("example"), f"{method} {path} {media} has no example"


def test_json_body_examples_are_valid_requests(client: TestClient, document: dict[str, Any]) -> None:
    """Each example passes the request model: a client that copies one gets past validation (its file ids and
    concepts do not exist here, and the example webhook host does not resolve offline, so the service answers 422
    naming those, never a schema error)."""
    for path in ("/v1/trainings", "/v1/generations"):
        examples = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["examples"]
        assert len(examples) >= 2
        for name, example in examples.items():
            r = client.post(path, json=example["value"], headers=AUTH)
            assert r.status_code == 422, (path, name, r.text)
            assert r.json()["code"] in ("unknown_file", "unknown_concept", "webhook_url_forbidden"), (
                path,
                name,
                r.json(),
            )


def test_errors_are_problem_json_with_a_schema_and_only_where_possible(document: dict[str, Any]) -> None:
    assert set(document["components"]["schemas"]["Problem"]["required"]) == {
        "type",
        "title",
        "status",
        "detail",
        "code",
    }
    statuses: dict[str, set[str]] = {}
    for method, path, op in _operations(document):
        errors = {status for status in op["responses"] if status.startswith(("4", "5"))}
        statuses[f"{method} {path}"] = errors
        for status in errors - ({"503"} if path == "/readyz" else set()):
            content = op["responses"][status]["content"]
            assert list(content) == ["application/problem+json"], (method, path, status)
            assert content["application/problem+json"]["schema"] == {"$ref": "#/components/schemas/Problem"}
    assert statuses["get /healthz"] == set()
    assert statuses["get /readyz"] == {"503"}
    # Only where they can happen: no 413/415 outside uploads, no 401 on the signed-object route, no 403 on /v1/jobs.
    assert statuses["post /v1/files"] == {"400", "401", "413", "415", "422", "429", "500", "503"}
    assert statuses["get /v1/jobs/{job_id}"] == {"401", "404", "429", "500", "503"}
    assert statuses["get /v1/objects/{key}"] == {"403", "404", "422", "500", "503"}
    assert len({frozenset(s) for s in statuses.values()}) >= 6


def test_job_output_is_a_union_told_apart_by_kind(document: dict[str, Any]) -> None:
    output = document["components"]["schemas"]["Job"]["properties"]["output"]
    union = next(branch for branch in output["anyOf"] if "oneOf" in branch)
    assert union["discriminator"]["propertyName"] == "kind"
    assert set(union["discriminator"]["mapping"]) == {"training", "generation"}


def test_job_output_models_read_what_the_worker_writes() -> None:
    """The worker stores outputs without ``kind`` (services/worker/training.py, generation.py); the job's kind
    picks the model, and keys the model does not name pass through."""
    image = {"file_id": "file_1", "width": 64, "height": 64, "seed": 7}
    base = {"id": "job_1", "status": "succeeded", "created_at": "2026-01-01T00:00:00Z", "input": {}}
    urls = {"get": "g", "cancel": "c", "events": "e"}
    generation = Job.model_validate(
        {
            **base,
            "kind": "generation",
            "urls": urls,
            "output": {"images": [image], "stage1_images": [image], "masks": []},
        }
    )
    assert isinstance(generation.output, GenerationOutput) and generation.output.images[0].seed == 7
    training = Job.model_validate(
        {
            **base,
            "kind": "training",
            "urls": urls,
            "output": {"concept_id": "cpt_1", "masks": [image], "diagnostics": {"attention_in_mask": 0.8}, "x": 1},
        }
    )
    assert isinstance(training.output, TrainingOutput) and training.output.concept_id == "cpt_1"
    dumped = training.model_dump(mode="json")["output"]
    assert dumped["kind"] == "training" and dumped["x"] == 1 and dumped["diagnostics"]["attention_in_mask"] == 0.8
    with pytest.raises(ValueError, match="concept_id"):
        Job.model_validate({**base, "kind": "training", "urls": urls, "output": {"images": []}})


def test_idempotent_replay_header_is_documented(document: dict[str, Any]) -> None:
    for path in ("/v1/trainings", "/v1/generations"):
        headers = document["paths"][path]["post"]["responses"]["202"]["headers"]
        assert {"Location", "Idempotent-Replayed"} <= set(headers)


def test_problem_type_points_at_the_served_problem_page(client: TestClient) -> None:
    r = client.get("/v1/jobs/job_nope", headers=AUTH)
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert problem["type"] == "http://testserver/problems#not_found"
    page = client.get("/problems")
    assert page.status_code == 200 and 'id="not_found"' in page.text


# ---- documentation pages ------------------------------------------------------------------------------------


def _asset_urls(html: str) -> list[str]:
    return re.findall(r"""(?:src|href)=["']([^"']+)["']|url: ?['"]([^'"]+)['"]""", html)  # type: ignore[return-value]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_doc_pages_load_only_local_assets(client: TestClient, page: str) -> None:
    r = client.get(page)
    assert r.status_code == 200
    # No absolute URL anywhere in the page: an air-gapped install must render it.
    assert not re.search(r"https?://", r.text), re.findall(r"https?://[^\s\"']+", r.text)
    urls = [u for pair in _asset_urls(r.text) for u in pair if u]
    scripts = [u for u in urls if u.endswith(".js")]
    assert scripts and all(u.startswith("/static/") for u in scripts), urls
    assert "/openapi.json" in r.text
    for url in urls:
        if url.startswith("/static/"):
            asset = client.get(url)
            assert asset.status_code == 200, url
            assert len(asset.content) > 0


def test_assets_are_the_vendored_upstream_files(client: TestClient) -> None:
    manifest = json.loads((STATIC / "assets.json").read_text())
    for folder, package in manifest.items():
        assert (STATIC / folder / "LICENSE").is_file(), f"{folder} ships without its license"
        for name, entry in package["files"].items():
            # httpx asks for gzip and decodes it; a client that does not ask gets the plain bytes.
            for headers in ({}, {"Accept-Encoding": "identity"}):
                r = client.get(f"/static/{folder}/{name}", headers=headers)
                assert r.status_code == 200
                assert hashlib.sha256(r.content).hexdigest() == entry["sha256"], (folder, name, headers)
                assert r.headers["content-type"].startswith(entry["content_type"].split(";")[0])
    compressed = client.get("/static/swagger-ui/swagger-ui-bundle.js", headers={"Accept-Encoding": "gzip"})
    assert compressed.headers["content-encoding"] == "gzip"
    assert client.get("/static/swagger-ui/nope.js").status_code == 404
    assert client.get("/static/../assets.json").status_code == 404


def test_vendored_assets_stay_small() -> None:
    total = sum(p.stat().st_size for p in STATIC.rglob("*") if p.is_file())
    assert total < 2 * 1024 * 1024, total


def test_assets_are_shipped_as_package_data() -> None:
    """pyproject's package-data globs match every vendored file (else an installed wheel renders blank pages)."""
    import tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["services.api"]
    package_root = STATIC.parent
    for path in STATIC.rglob("*"):
        if path.is_file():
            relative = path.relative_to(package_root)
            assert any(relative.match(g) for g in globs), f"{relative} is not package data"
    gzip.decompress((STATIC / "redoc" / "redoc.standalone.js.gz").read_bytes())  # stored compressed, intact


# ---- URLs follow the address the API is served at ------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served(redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> Iterator[str]:
    """The API on a real port under uvicorn, as ``tessera api --port N`` runs it, with no public base URL set."""
    redis_client.flushdb()
    settings = _settings(redis_url, tmp_path / "objects")
    assert "public_base_url" not in settings.storage.model_fields_set
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, enqueue=lambda _record: None), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_signed_urls_follow_the_served_address(served: str, redis_url: str) -> None:
    base = served
    assert not base.endswith(":8000")  # the default public_base_url's port, which must not leak into URLs
    with httpx.Client(base_url=base, headers=AUTH, timeout=10) as http:
        file_id = http.post("/v1/files", files={"file": ("x.png", png(), "image/png")}).json()["id"]
        url = http.get(f"/v1/files/{file_id}").json()["url"]
        assert url.startswith(f"{base}/v1/objects/"), url
        fetched = httpx.get(url, timeout=10)
        assert fetched.status_code == 200 and fetched.content == png()

        # A finished job's output images and its urls point there too.
        jobs = JobStore(redis.Redis.from_url(redis_url))
        record = JobRecord(id="job_u", tenant="tenant-a", kind="generation", queue="gpu", input={})
        jobs.create(record)
        jobs.transition("job_u", "queued", "running")
        image = {"file_id": file_id, "width": 64, "height": 64, "seed": 1}
        jobs.transition(
            "job_u",
            "running",
            "succeeded",
            update=lambda r: setattr(r, "output", {"images": [image], "stage1_images": [image], "masks": []}),
        )
        job = http.get("/v1/jobs/job_u").json()
        assert job["urls"]["get"] == f"{base}/v1/jobs/job_u"
        assert job["output"]["kind"] == "generation"
        assert job["output"]["images"][0]["url"].startswith(f"{base}/v1/objects/")
        assert httpx.get(job["output"]["images"][0]["url"], timeout=10).content == png()


def test_a_configured_public_base_url_wins(redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> None:
    redis_client.flushdb()
    settings = _settings(redis_url, tmp_path / "objects", public_base_url="https://tessera.example")
    with TestClient(create_app(settings, enqueue=lambda _record: None), base_url="http://127.0.0.1:9000") as c:
        file_id = c.post("/v1/files", files={"file": ("x.png", png(), "image/png")}, headers=AUTH).json()["id"]
        assert c.get(f"/v1/files/{file_id}", headers=AUTH).json()["url"].startswith("https://tessera.example/v1/")
