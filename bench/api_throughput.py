"""Create-job throughput and latency of the API, relative to a bare FastAPI endpoint, in one run.

Starts a private redis-server, the Tessera API (uvicorn, real Redis, the real create path: authentication and rate
limit, the concept lookup, the job record and its Celery message written in one round trip; the messages just
queue up, no worker runs) and a bare FastAPI app whose endpoints validate a similar JSON body and answer 202: a
plain ``def`` route (FastAPI runs it in its thread pool: the baseline the targets are set against) and an
``async def`` one (the cheapest answer FastAPI gives, reported beside it without a target). This process, apart
from the servers, drives each with the same concurrent load (``bench.http_load``: keep-alive HTTP/1.1 over
loopback, light enough that the server is the bottleneck) and prints requests/s, mean, p50 and p99 for each, and
the ratios; then the same one request at a time, the cost of a request itself rather than its wait for others.

    .venv/bin/python -m bench.api_throughput [--requests 2000] [--concurrency 16] [--rows FILE] [--quick]

Suite rows (``--rows``): ``create_path.{mean,p50,p99,throughput}_ratio`` under load and
``create_path.single.{mean,p50}_ratio`` one at a time, each Tessera over the bare endpoint; the mean and p50 ratios
have the target "<= 3" (creating a job costs at most three bare requests). ``create_path.vs_async.{mean,p50}_ratio``
and ``create_path.vs_async.single.p50_ratio``: the same over the async bare endpoint, informative.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import redis
from fastapi import FastAPI
from pydantic import BaseModel, Field

from bench.http_load import post_load
from bench.rows import Row, add_rows_argument, write_rows
from core.stores.catalog import Catalog, ConceptRecord
from services.processes import Child, free_port, python_module, start_redis, wait_for

KEY = "bench-key"
PATH = "/v1/generations"
# Each arm: (server, path). The bare app serves both of its endpoints.
ARMS = {"tessera": ("tessera", PATH), "bare": ("bare", PATH), "bare_async": ("bare", "/async" + PATH)}
BODY = {"prompt": "a <rex> on the beach", "width": 512, "height": 512, "num_inference_steps": 30, "seed": 1}
TARGET = "<= 3"


class _Body(BaseModel):
    prompt: str = Field(min_length=1, max_length=1000)
    width: int = Field(512, ge=64, le=1024)
    height: int = Field(512, ge=64, le=1024)
    num_inference_steps: int = Field(50, ge=1, le=150)
    seed: int | None = None


def bare_app() -> FastAPI:
    """The baselines: FastAPI endpoints that validate a body and answer, nothing else; a plain ``def`` route at
    ``/v1/generations`` and an ``async def`` one at ``/async/v1/generations``."""
    app = FastAPI()

    @app.post(PATH, status_code=202)
    def create(body: _Body) -> dict[str, object]:
        return {"id": "job_x", "status": "queued", "input": body.model_dump()}

    @app.post("/async" + PATH, status_code=202)
    async def create_async(body: _Body) -> dict[str, object]:
        return {"id": "job_x", "status": "queued", "input": body.model_dump()}

    return app


def _load(url: str, path: str, total: int, concurrency: int) -> dict[str, float]:
    """One timed run of ``total`` requests to ``url + path``: requests/s, mean, p50 and p99 in ms."""
    headers = {"Authorization": f"Bearer {KEY}"}
    started = time.perf_counter()
    lat = sorted(asyncio.run(post_load(url, path, BODY, headers=headers, total=total, concurrency=concurrency)))
    seconds = time.perf_counter() - started
    return {
        "rps": len(lat) / seconds,
        "mean_ms": statistics.fmean(lat) * 1000,
        "p50_ms": statistics.median(lat) * 1000,
        "p99_ms": lat[max(0, int(len(lat) * 0.99) - 1)] * 1000,
    }


def _alternate(urls: dict[str, str], requests: int, concurrency: int) -> dict[str, dict[str, float]]:
    """Best of two runs per arm, alternating, so drift on a noisy machine hits every arm alike."""
    results: dict[str, list[dict[str, float]]] = {name: [] for name in ARMS}
    for _ in range(2):
        for name, (server, path) in ARMS.items():
            _load(urls[server], path, max(10, requests // 10), concurrency)  # warm-up: connections, thread pool
            results[name].append(_load(urls[server], path, requests, concurrency))
    return {n: max(r, key=lambda x: x["rps"]) for n, r in results.items()}


def _start_servers(tmp: Path) -> tuple[list[Child], dict[str, str]]:
    """A private redis-server with one ready concept, the Tessera API on it, and the bare app; their URLs."""
    redis_child, redis_url = start_redis(tmp / "redis", persist=False)
    children: list[Child] = [redis_child]
    urls: dict[str, str] = {}
    try:
        Catalog(redis.Redis.from_url(redis_url)).reserve_concept(
            ConceptRecord(
                id="cpt_rex",
                tenant="bench",
                name="rex",
                class_word="dog",
                training_job_id="job_0",
                status="ready",
                adapter_bytes=1,
                adapter_sha256="0" * 64,
                adapter_format="tessera.edlora",
            )
        )
        env = {
            "TESSERA_REDIS__URL": redis_url,
            "TESSERA_STORAGE__ROOT": str(tmp / "objects"),
            "TESSERA_API_KEYS": f"bench:{KEY}",
            "TESSERA_QUOTAS__MAX_ACTIVE_JOBS": "100000000",
            "TESSERA_QUOTAS__REQUESTS_PER_MINUTE": "100000000",
            "PYTHONPATH": os.getcwd(),
        }
        for name, target in (("tessera", "services.api.app:create_app"), ("bare", "bench.api_throughput:bare_app")):
            port = free_port()
            child = Child(
                name,
                python_module(
                    "uvicorn", target, "--factory", "--port", str(port), "--log-level", "warning", "--no-access-log"
                ),
                env=env,
            )
            children.append(child)
            urls[name] = f"http://127.0.0.1:{port}"
            wait_for(
                lambda url=urls[name]: httpx.get(url + "/docs", timeout=2).status_code == 200,
                what=name,
                child=child,
            )
    except BaseException:
        for started in reversed(children):
            started.stop()
        raise
    return children, urls


def main(argv: Sequence[str] | None = None) -> None:
    """Measure, print the detail, and write the suite's rows (``--rows``)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="requests per timed run under load")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--single-requests", type=int, default=None, help="requests per one-at-a-time run (default: requests / 5)"
    )
    add_rows_argument(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.concurrency = 200, 8
        args.single_requests = args.single_requests or 50
    single = args.single_requests or max(100, args.requests // 5)
    with tempfile.TemporaryDirectory() as tmp:
        children, urls = _start_servers(Path(tmp))
        try:
            loaded = _alternate(urls, args.requests, args.concurrency)
            alone = _alternate(urls, single, 1)
        finally:
            for child in reversed(children):
                child.stop()
    loaded_title = f"{args.requests} POST /v1/generations, concurrency {args.concurrency}"
    alone_title = f"{single} POST /v1/generations, one at a time"
    _report(loaded_title, loaded)
    _report(alone_title, alone)
    write_rows(_rows(loaded, alone, loaded_title, alone_title), args.rows)


def _rows(
    loaded: dict[str, dict[str, float]], alone: dict[str, dict[str, float]], loaded_title: str, alone_title: str
) -> list[Row]:
    """The suite's rows: each figure of Tessera's create path over the bare endpoint's, same run."""
    t, b, a = loaded["tessera"], loaded["bare"], loaded["bare_async"]
    ts, bs = alone["tessera"], alone["bare"]
    under_load = "bare FastAPI endpoint, same body and load"
    async_under_load = "async def bare FastAPI endpoint, same body and load"
    one_at_a_time = "bare FastAPI endpoint, same body, one request at a time"
    create = (
        "POST /v1/generations (auth, rate limit, concept lookup, the job record and its queue message in one "
        "Redis round trip)"
    )
    return [
        Row(
            "create_path.mean_ratio",
            t["mean_ms"] / b["mean_ms"],
            "x",
            under_load,
            TARGET,
            f"Mean latency of {create} over a bare endpoint that only validates the body ({loaded_title}): what "
            "accepting a job costs beyond HTTP and validation, under load.",
        ),
        Row(
            "create_path.p50_ratio",
            t["p50_ms"] / b["p50_ms"],
            "x",
            under_load,
            TARGET,
            f"Median latency, same runs as the mean ratio ({loaded_title}).",
        ),
        Row(
            "create_path.p99_ratio",
            t["p99_ms"] / b["p99_ms"],
            "x",
            under_load,
            None,
            f"Tail latency, same runs ({loaded_title}): informative only, a p99 of a few thousand requests on a "
            "shared machine is mostly scheduling noise.",
        ),
        Row(
            "create_path.throughput_ratio",
            t["rps"] / b["rps"],
            "x",
            under_load,
            None,
            f"Requests/s of the create path over the bare endpoint's ({loaded_title}; higher is better, 1 = free): "
            "how many jobs one API process accepts for each bare request it could answer.",
        ),
        Row(
            "create_path.single.p50_ratio",
            ts["p50_ms"] / bs["p50_ms"],
            "x",
            one_at_a_time,
            TARGET,
            f"Median latency with one request in flight ({alone_title}): the cost of a create request itself, "
            "without waiting for others.",
        ),
        Row(
            "create_path.single.mean_ratio",
            ts["mean_ms"] / bs["mean_ms"],
            "x",
            one_at_a_time,
            TARGET,
            f"Mean latency with one request in flight ({alone_title}), same runs as the single p50 ratio.",
        ),
        Row(
            "create_path.vs_async.mean_ratio",
            t["mean_ms"] / a["mean_ms"],
            "x",
            async_under_load,
            None,
            f"Mean latency of the create path over an async def bare endpoint ({loaded_title}): the cheapest answer "
            "FastAPI gives, with no thread-pool hop; informative, the targets are against the plain def route.",
        ),
        Row(
            "create_path.vs_async.p50_ratio",
            t["p50_ms"] / a["p50_ms"],
            "x",
            async_under_load,
            None,
            f"Median latency over the async def bare endpoint, same runs ({loaded_title}); informative.",
        ),
        Row(
            "create_path.vs_async.single.p50_ratio",
            ts["p50_ms"] / alone["bare_async"]["p50_ms"],
            "x",
            "async def bare FastAPI endpoint, same body, one request at a time",
            None,
            f"Median latency with one request in flight over the async def bare endpoint ({alone_title}); "
            "informative.",
        ),
    ]


def _report(title: str, best: dict[str, dict[str, float]]) -> None:
    print(f"{title}, best of 2 alternating runs:")
    for name, r in best.items():
        print(
            f"  {name:<10} {r['rps']:8.1f} req/s   mean {r['mean_ms']:7.2f} ms   p50 {r['p50_ms']:7.2f} ms"
            f"   p99 {r['p99_ms']:7.2f} ms"
        )
    t = best["tessera"]
    for base in ("bare", "bare_async"):
        b = best[base]
        print(
            f"  ratio (tessera / {base}): throughput {t['rps'] / b['rps']:.2f}x,"
            f" mean {t['mean_ms'] / b['mean_ms']:.2f}x, p50 {t['p50_ms'] / b['p50_ms']:.2f}x,"
            f" p99 {t['p99_ms'] / b['p99_ms']:.2f}x"
            + ("  (target: create-job costs at most 3x the bare endpoint)" if base == "bare" else "  (informative)")
        )


if __name__ == "__main__":
    main()
