"""/console: the browser console, static files from ``services/api/console`` that call the public API.

The pages hold no server-side logic and reach no private endpoint: everything they show comes from ``/v1`` with the
user's API key (kept in the tab's session storage), and ``/openapi.json`` for option defaults. They are served from
the API's own origin, so the browser needs no CORS to call it. ``TESSERA_CONSOLE_ENABLED=false`` turns them off
(the routes answer 404 as for any unknown path). Not part of the API's OpenAPI document.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse

from core.errors import NotFoundError
from services.api.deps import State

CONSOLE = Path(__file__).resolve().parent.parent / "console"
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# Scripts, styles and API calls from this origin only. Images may come from elsewhere: with the S3 backend the
# signed URLs point at the bucket's endpoint, which the console cannot know in advance. No inline script or
# style, no framing (the key is typed into these pages), no form posting anywhere.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data: blob: https: http:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    # Signed URLs must not travel to image hosts in a Referer header.
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}

router = APIRouter(include_in_schema=False)


@dataclass(frozen=True)
class ConsoleFile:
    """One static file of the console: its bytes, content type and strong ETag."""

    data: bytes
    content_type: str
    etag: str


@cache
def console_files() -> dict[str, ConsoleFile]:
    """Every servable file of the console by name (read once per process; an install ships them read-only)."""
    found: dict[str, ConsoleFile] = {}
    for path in sorted(CONSOLE.iterdir()):
        content_type = _TYPES.get(path.suffix)
        if path.is_file() and content_type is not None:
            data = path.read_bytes()
            found[path.name] = ConsoleFile(data, content_type, f'"{hashlib.sha256(data).hexdigest()[:32]}"')
    return found


def _serve(name: str, state: State, request: Request) -> Response:
    if not state.settings.console_enabled:
        raise NotFoundError("the console is turned off (TESSERA_CONSOLE_ENABLED=false)")
    file = console_files().get(name)
    if file is None:
        raise NotFoundError(f"no console file {name}")
    # Revalidated on every load (no-cache) so an upgraded install is picked up at once; the ETag keeps it a 304.
    headers = {**_SECURITY_HEADERS, "Cache-Control": "no-cache", "ETag": file.etag}
    if request.headers.get("if-none-match") == file.etag:
        return Response(status_code=304, headers=headers)
    return Response(file.data, media_type=file.content_type, headers=headers)


@router.get("/console")
def console_page(state: State, request: Request) -> Response:
    """The console's single page (its views are chosen by the URL fragment)."""
    return _serve("index.html", state, request)


@router.get("/console/")
def console_slash(state: State) -> RedirectResponse:
    """``/console/`` → ``/console``, so relative asset paths resolve the same way from both."""
    if not state.settings.console_enabled:
        raise NotFoundError("the console is turned off (TESSERA_CONSOLE_ENABLED=false)")
    return RedirectResponse("../console", status_code=308)


@router.get("/console/{name}")
def console_asset(name: str, state: State, request: Request) -> Response:
    """A script, style sheet or icon of the console."""
    return _serve(name, state, request)
