"""The API's composition root: ``create_app(settings)`` builds every dependency once."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable

import redis
from fastapi import FastAPI, Request, Response

from core.config import Settings, get_settings
from core.presenter import Presenter
from core.stores.catalog import Catalog
from core.stores.jobs import JobStore
from core.stores.objects import make_object_store
from core.submissions import Enqueue
from services.api import errors, routes
from services.api.state import ApiState
from services.queue import CeleryTaskQueue, make_producer

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *, enqueue: Enqueue | None = None) -> FastAPI:
    """Build the FastAPI application.

    Args:
        settings: the configuration; read from the environment when omitted.
        enqueue: how jobs reach workers; Celery over the configured Redis when omitted.
    """
    settings = settings or get_settings()
    client = redis.Redis.from_url(settings.redis.url, socket_timeout=10, health_check_interval=30)
    app = FastAPI(
        title="Tessera",
        version="1.0",
        summary="Multi-concept image personalization: learn concepts, generate scenes that combine them.",
    )
    jobs = JobStore(client, ttl_seconds=settings.job_ttl_seconds)
    catalog = Catalog(client)
    objects = make_object_store(settings.storage)
    app.state.tessera = ApiState(
        settings=settings,
        redis=client,
        jobs=jobs,
        catalog=catalog,
        objects=objects,
        enqueue=enqueue or CeleryTaskQueue(make_producer(settings)),
        tenant_by_key=settings.tenant_keys(),
        presenter=Presenter(
            jobs=jobs,
            catalog=catalog,
            objects=objects,
            public_base_url=settings.storage.public_base_url,
            url_expiry_seconds=settings.storage.url_expiry_seconds,
        ),
    )
    errors.install(app)
    for module in (routes.files, routes.jobs, routes.concepts, routes.objects, routes.health):
        app.include_router(module.router)

    @app.middleware("http")
    async def request_id(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex
        response = await call_next(request)
        response.headers["X-Request-ID"] = rid
        return response

    return app
