"""Tenant B cannot read, list, cancel, delete or use tenant A's objects, on every route with an id: the routes come
from the OpenAPI document, so a new route is covered (or this test fails until it is)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from core.config import Settings
from services.api.app import create_app
from tests.reliability import ledger
from tests.services.test_api import A, B, make_ready_concept, png, upload

# Routes whose id is not a tenant's: signed object URLs (the signature is the credential; tampering is 403,
# tests/services/test_api.py).
NOT_TENANT_ROUTES = {"/v1/objects/{key}"}


@pytest.fixture
def api(redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> Iterator[tuple[TestClient, Settings]]:
    settings = Settings(
        redis={"url": redis_url},
        storage={"backend": "local", "root": tmp_path / "objects", "public_base_url": "http://testserver"},
        api_keys="tenant-a:key-a,tenant-b:key-b",
    )
    with TestClient(create_app(settings)) as client:
        yield client, settings


def _id_routes(client: TestClient) -> list[tuple[str, str, str]]:
    """``(method, path template, parameter)`` for every operation whose path carries an id."""
    routes = []
    for path, operations in client.get("/openapi.json").json()["paths"].items():
        params = re.findall(r"{(\w+)}", path)
        if not params or path in NOT_TENANT_ROUTES:
            continue
        for method in operations:
            routes.append((method.upper(), path, params[0]))
    return routes


def test_tenant_b_gets_404_for_tenant_a_objects_on_every_id_route(api: tuple[TestClient, Settings]) -> None:
    client, settings = api
    file_a = upload(client, png())["id"]
    job_a = client.post(
        "/v1/trainings", json={"concept": {"name": "rex", "class_word": "dog"}, "images": [file_a]}, headers=A
    ).json()["id"]
    make_ready_concept(settings, "tenant-a", "fido")
    concept_a = client.get("/v1/concepts/fido", headers=A).json()
    ids: dict[str, list[str]] = {"file_id": [file_a], "job_id": [job_a], "ref": ["fido", concept_a["id"]]}
    missing = {"file_id": "file_missing", "job_id": "job_missing", "ref": "nobody"}

    routes = _id_routes(client)
    assert {p for _, _, p in routes} <= set(ids), f"a route with an unknown id kind: {routes}"
    assert len(routes) >= 8
    for method, path, param in routes:
        refused = []
        for value in ids[param]:
            crossing = client.request(method, path.replace("{" + param + "}", value), headers=B)
            absent = client.request(method, path.replace("{" + param + "}", missing[param]), headers=B)
            # The same answer as for an id that does not exist: nothing tells B the object is there.
            same = crossing.status_code == 404 == absent.status_code
            refused.append(same and crossing.json()["code"] == absent.json()["code"])
        ledger.record("tenant", f"{method} {path}", ok=all(refused))
        assert all(refused), (method, path, ids[param], refused)

    # Lists are per tenant, and B cannot use A's file or concept either.
    assert client.get("/v1/jobs", headers=B).json()["data"] == []
    assert client.get("/v1/concepts", headers=B).json()["data"] == []
    used = client.post(
        "/v1/trainings", json={"concept": {"name": "mine", "class_word": "dog"}, "images": [file_a]}, headers=B
    )
    assert used.status_code == 422 and used.json()["code"] == "unknown_file"
    body: dict[str, Any] = {"prompt": "a <fido> on the beach", "concepts": [{"concept": "fido"}]}
    generated = client.post("/v1/generations", json=body, headers=B)
    assert generated.status_code == 422 and generated.json()["code"] == "unknown_concept"
    # A still has everything: B's deletes and cancels touched nothing.
    assert client.get(f"/v1/files/{file_a}", headers=A).status_code == 200
    assert client.get(f"/v1/jobs/{job_a}", headers=A).json()["status"] == "queued"
    assert client.get("/v1/concepts/fido", headers=A).status_code == 200
