"""/metrics: HTTP traffic of this process plus job and queue figures read from Redis at scrape time
(so every API replica reports the same job numbers)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import redis
from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.stores import stats
from core.stores.job_store import JobStore
from core.tasks import QUEUES


class JobCollector(Collector):
    def __init__(self, client: redis.Redis, jobs: JobStore) -> None:
        self._r, self._jobs = client, jobs

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        snap = stats.snapshot(self._r)
        created = CounterMetricFamily("tessera_jobs_created", "Jobs created, by kind.", labels=["kind"])
        for kind, value in snap.created.items():
            created.add_metric([kind], value)
        yield created
        finished = CounterMetricFamily(
            "tessera_jobs_finished", "Jobs finished, by kind and status.", labels=["kind", "status"]
        )
        for (kind, status), value in snap.finished.items():
            finished.add_metric([kind, status], value)
        yield finished
        for name, help_text in (
            ("queue_seconds", "Time jobs waited in the queue."),
            ("run_seconds", "Time jobs ran."),
        ):
            family = HistogramMetricFamily(f"tessera_job_{name}", help_text, labels=["kind"])
            for (histogram, kind), (buckets, total) in snap.histograms.items():
                if histogram == name:
                    ordered = sorted(buckets.items())
                    family.add_metric([kind], [(_le(b), c) for b, c in ordered], total)
            yield family
        depth = GaugeMetricFamily("tessera_queue_depth", "Jobs waiting in each queue.", labels=["queue"])
        broker = GaugeMetricFamily(
            "tessera_broker_queue_length", "Messages in each broker queue (Redis list).", labels=["queue"]
        )
        for queue in QUEUES:
            depth.add_metric([queue], self._jobs.queue_depth(queue))
            broker.add_metric([queue], int(self._r.llen(queue)))
        yield depth
        yield broker


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def install(app: FastAPI, client: redis.Redis, jobs: JobStore) -> None:
    """Count requests by route template and status, time them, and serve ``/metrics``."""
    registry = CollectorRegistry()
    requests = Counter("tessera_http_requests", "HTTP requests.", ["method", "route", "status"], registry=registry)
    latency = Histogram(
        "tessera_http_request_seconds", "HTTP request latency.", ["method", "route"], registry=registry
    )
    registry.register(JobCollector(client, jobs))

    # A plain ASGI middleware (not @app.middleware, whose per-request task and body buffering cost
    # more than many endpoints themselves, and which gets in the way of streaming responses).
    class Measure:
        def __init__(self, inner: ASGIApp) -> None:
            self.inner = inner

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await self.inner(scope, receive, send)
                return
            started = time.perf_counter()
            status = [500]

            async def send_with_status(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status[0] = message["status"]
                await send(message)

            try:
                await self.inner(scope, receive, send_with_status)
            finally:
                # The route template, not the path: ids would make unbounded label sets.
                template = getattr(scope.get("route"), "path", "unmatched")
                requests.labels(scope["method"], template, str(status[0])).inc()
                latency.labels(scope["method"], template).observe(time.perf_counter() - started)

    app.add_middleware(Measure)

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
