"""The console's static files and routes, without a browser: served with a strict Content-Security-Policy, switched
off by ``TESSERA_CONSOLE_ENABLED``, outside the OpenAPI document, light, and calling only public API routes."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from core.config import Settings
from services.api.app import create_app
from services.api.routes.console import CONSOLE, console_files

# The budget: the console's pages weigh less than this without images (every static file together).
WEIGHT_BUDGET_BYTES = 300 * 1024


def _settings(redis_url: str, root: Path, **extra: object) -> Settings:
    return Settings(
        redis={"url": redis_url},
        storage={"backend": "local", "root": root / "objects", "public_base_url": "http://testserver"},
        api_keys="tenant-a:key-a",
        **extra,  # type: ignore[arg-type]
    )


@pytest.fixture
def client(redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(_settings(redis_url, tmp_path))) as c:
        yield c


def test_the_console_page_and_its_assets_are_served_with_a_strict_policy(client: TestClient) -> None:
    page = client.get("/console")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "connect-src 'self'" in policy and "unsafe-inline" not in policy
    assert page.headers["referrer-policy"] == "no-referrer" and page.headers["x-frame-options"] == "DENY"
    # Every asset the page names is served, relative to /console (so a proxy prefix keeps working).
    assets = re.findall(r'(?:src|href)="(console/[^"]+)"', page.text)
    assert {"console/console.js", "console/console.css"} <= set(assets)
    for asset in assets:
        response = client.get(f"/{asset}")
        assert response.status_code == 200, asset
        again = client.get(f"/{asset}", headers={"If-None-Match": response.headers["etag"]})
        assert again.status_code == 304, asset
    assert client.get("/console/").status_code == 200  # redirected to /console
    assert client.get("/console/%2e%2e%2fapp.py").status_code == 404
    assert client.get("/console/nope.js").status_code == 404


def test_the_console_is_not_in_the_openapi_document(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith("/console")]


def test_a_setting_turns_the_console_off(redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> None:
    with TestClient(create_app(_settings(redis_url, tmp_path, console_enabled=False))) as off:
        assert off.get("/console").status_code == 404
        assert off.get("/console/console.js").status_code == 404
        assert off.get("/healthz").status_code == 200


def test_the_console_weighs_under_the_budget() -> None:
    weight = sum(file.stat().st_size for file in CONSOLE.iterdir() if file.is_file())
    assert weight < WEIGHT_BUDGET_BYTES, f"{weight} bytes"
    assert set(console_files()) == {p.name for p in CONSOLE.iterdir() if p.suffix in (".html", ".js", ".css", ".svg")}


def test_the_console_calls_only_public_api_routes(client: TestClient) -> None:
    """Every API path the script names is a route of the OpenAPI document (no private endpoint), and it loads
    nothing from another origin."""
    script = (CONSOLE / "console.js").read_text()
    public = list(client.get("/openapi.json").json()["paths"])
    patterns = [re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", p.lstrip("/")) + "$") for p in public]
    called = set(re.findall(r'"(v1/[a-z_/]*)', script))
    assert called, "the script calls the API"
    for prefix in called:
        # A literal prefix like "v1/jobs/" continues with an id; check it with a stand-in id.
        path = prefix + "job_x" if prefix.endswith("/") else prefix
        path = path.split("?")[0]
        assert any(p.match(path) for p in patterns) or any(p.match(path + "/job_x") for p in patterns), prefix
    for text in (script, (CONSOLE / "index.html").read_text(), (CONSOLE / "console.css").read_text()):
        assert not re.search(r"(?:src|href|url\()\s*=?\s*[\"']?(?:https?:)?//", text), "no third-party asset or font"
