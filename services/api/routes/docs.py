"""/docs (Swagger UI), /redoc (ReDoc), their assets under /static, and /problems (the problem types).

The UIs' scripts and styles are vendored in ``services/api/static`` (see its README.md) and served from here, so
the pages render on a machine without internet access.
"""

from __future__ import annotations

import gzip
import html
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse

from core.errors import NotFoundError
from services.api.errors import PROBLEM_TYPES

STATIC = Path(__file__).resolve().parent.parent / "static"
# The assets never change under one name (their version is in assets.json, which changes with them), but a
# rebuilt install may ship new ones: a day of caching, not forever.
_CACHE = "public, max-age=86400"

router = APIRouter(include_in_schema=False)


@dataclass(frozen=True)
class Asset:
    """One vendored file: where it is stored, whether gzip-compressed, and what it is served as."""

    path: Path
    gzipped: bool
    content_type: str
    sha256: str


@cache
def assets() -> dict[str, Asset]:
    """``"swagger-ui/swagger-ui-bundle.js"`` → its ``Asset``, from ``static/assets.json``."""
    manifest = json.loads((STATIC / "assets.json").read_text())
    found: dict[str, Asset] = {}
    for folder, package in manifest.items():
        for name, entry in package["files"].items():
            stored = STATIC / folder / entry["stored"]
            found[f"{folder}/{name}"] = Asset(stored, stored.suffix == ".gz", entry["content_type"], entry["sha256"])
    return found


def _root(request: Request) -> str:
    """The path prefix the app is mounted at (behind a proxy that strips it), without a trailing slash."""
    return str(request.scope.get("root_path", "")).rstrip("/")


@router.get("/static/{folder}/{name}")
def static_asset(folder: str, name: str, request: Request) -> Response:
    """A vendored UI asset; gzip-encoded as stored when the client accepts it, else decompressed."""
    asset = assets().get(f"{folder}/{name}")
    if asset is None:
        raise NotFoundError(f"no asset {folder}/{name}")
    data = asset.path.read_bytes()
    headers = {"Cache-Control": _CACHE, "Vary": "Accept-Encoding"}
    if asset.gzipped:
        if "gzip" in request.headers.get("accept-encoding", "").lower():
            headers["Content-Encoding"] = "gzip"
        else:
            data = gzip.decompress(data)
    return Response(data, media_type=asset.content_type, headers=headers)


@router.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI on this API's OpenAPI document."""
    root = _root(request)
    return get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} API",
        swagger_js_url=f"{root}/static/swagger-ui/swagger-ui-bundle.js",
        swagger_css_url=f"{root}/static/swagger-ui/swagger-ui.css",
        swagger_favicon_url=f"{root}/static/swagger-ui/favicon-32x32.png",
        swagger_ui_parameters={"persistAuthorization": True},
    )


@router.get("/redoc")
def redoc(request: Request) -> HTMLResponse:
    """ReDoc on this API's OpenAPI document (no web fonts: they would come from a CDN)."""
    root = _root(request)
    return get_redoc_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} API",
        redoc_js_url=f"{root}/static/redoc/redoc.standalone.js",
        redoc_favicon_url=f"{root}/static/swagger-ui/favicon-32x32.png",
        with_google_fonts=False,
    )


@router.get("/problems")
def problem_types() -> HTMLResponse:
    """What each problem ``code`` means: the page a problem's ``type`` URL points at (``/problems#{code}``)."""
    rows = "\n".join(
        f'<tr id="{code}"><td><code>{code}</code></td><td>{kind.status}</td><td>{html.escape(kind.summary)}</td></tr>'
        for code, kind in PROBLEM_TYPES.items()
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Tessera problem types</title>
<style>
body{{font-family:sans-serif;margin:2em}} td,th{{padding:.3em .8em;text-align:left}} :target{{background:#ffd}}
</style>
</head><body>
<h1>Problem types</h1>
<p>Every error is <code>application/problem+json</code> with a stable <code>code</code>. The repository's
<code>docs/problems.md</code> says when each happens and what to do.</p>
<table><thead><tr><th>code</th><th>status</th><th>meaning</th></tr></thead><tbody>
{rows}
</tbody></table></body></html>
"""
    return HTMLResponse(page)
