"""The API's composition root: ``create_app(settings)`` builds every dependency once."""

from __future__ import annotations

import logging
import uuid

import redis
import redis.asyncio
from fastapi import FastAPI
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.config import Settings, get_settings
from core.notifier import attach_webhooks
from core.stores.catalog import Catalog
from core.stores.idempotency import IdempotencyStore
from core.stores.job_store import JobStore
from core.stores.keys import ApiKeyStore
from core.stores.limits import RateLimiter, RateLimitState
from core.stores.object_factory import make_object_store
from core.stores.webhook_store import WebhookStore
from core.submissions import Enqueue, Policy
from services import logs
from services.api import errors, metrics, openapi, routes
from services.api.routes import console as console_routes
from services.api.state import ApiState
from services.queue import CeleryTaskQueue, delivery_sender, make_producer

logger = logging.getLogger(__name__)


class RequestId:
    """Echo ``X-Request-ID`` (or make one) on every response and bind it to the logs of the request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get("x-request-id")
        rid = (given or uuid.uuid4().hex)[:128]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).append("X-Request-ID", rid)
            await send(message)

        token = logs.request_id.set(rid)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            logs.request_id.reset(token)


class RateLimitHeaders:
    """Add the ``RateLimit-*`` headers of the request's API key (``request.state.rate_limit``, set by
    ``services.api.deps.get_tenant``) to its response, whatever the route returned."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_limits(message: Message) -> None:
            state = scope.get("state", {}).get("rate_limit")
            if message["type"] == "http.response.start" and isinstance(state, RateLimitState):
                headers = MutableHeaders(scope=message)
                for name, value in state.headers().items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_limits)


def create_app(settings: Settings | None = None, *, enqueue: Enqueue | None = None) -> FastAPI:
    """Build the FastAPI application.

    Args:
        settings: the configuration; read from the environment when omitted.
        enqueue: how jobs reach workers; when omitted, Celery over the configured Redis, a new job's message
            pushed by the job store's create script with its record (one round trip). An injected one is
            called once the record is stored.
    """
    settings = settings or get_settings()
    client = redis.Redis.from_url(settings.redis.dsn(), socket_timeout=10, health_check_interval=30)
    # The create path, authentication and event streams use it; event reads block at most a second, well inside the
    # timeout.
    aclient = redis.asyncio.Redis.from_url(settings.redis.dsn(), socket_timeout=10, health_check_interval=30)
    app = FastAPI(
        title="Tessera",
        version="1.0",
        summary="Multi-concept image personalization: learn concepts, generate scenes that combine them.",
        # Served by routes.docs from vendored assets, not FastAPI's CDN-loaded pages.
        docs_url=None,
        redoc_url=None,
    )
    jobs = JobStore(client, ttl_seconds=settings.job_ttl_seconds, async_client=aclient)
    catalog = Catalog(client, async_client=aclient)
    objects = make_object_store(settings.storage)
    producer = make_producer(settings)
    # A job canceled while queued completes here, in the API: its webhook is sent from here too.
    presenter = attach_webhooks(client, jobs, catalog, objects, settings.storage, delivery_sender(producer))
    app.state.tessera = ApiState(
        settings=settings,
        redis=client,
        jobs=jobs,
        catalog=catalog,
        objects=objects,
        enqueue=enqueue or CeleryTaskQueue(producer),
        tenant_by_key=settings.tenant_keys(),
        presenter=presenter,
        keys=ApiKeyStore(client, async_client=aclient),
        rate_limiter=RateLimiter(aclient, per_minute=settings.quotas.requests_per_minute),
        webhooks=WebhookStore(client),
        idempotency=IdempotencyStore(aclient),
        policy=Policy(
            max_active_jobs=settings.quotas.max_active_jobs,
            allow_private_webhooks=settings.webhooks.allow_private,
            allow_http_webhooks=settings.webhooks.allow_http,
            styling=settings.models.has_styling,
            preset=settings.models.preset,
            defaults=settings.models.generation_defaults,
            training_defaults=settings.models.training_defaults,
        ),
    )
    errors.install(app)
    for module in (
        routes.files,
        routes.jobs,
        routes.concepts,
        routes.webhooks,
        routes.objects,
        routes.health,
        routes.docs,
    ):
        app.include_router(module.router)
    # The browser console (static pages on the public API); outside the OpenAPI document.
    app.include_router(console_routes.router)
    openapi.install(app)

    metrics.install(app, client, jobs)

    app.add_middleware(RateLimitHeaders)
    app.add_middleware(RequestId)

    return app
