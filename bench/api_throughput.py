"""Create-job throughput and latency of the API, relative to a bare FastAPI endpoint, in one run.

Starts a private redis-server, the Tessera API (uvicorn, real Redis, real Celery producer; the
messages just queue up, no worker runs) and a bare FastAPI app whose one endpoint validates a
similar JSON body and answers 202. A second process drives each with the same concurrent load
(async httpx over loopback) and prints requests/s, mean, p50 and p99 for both, and the ratios; then the
same one request at a time, where the latency is the cost of a request itself rather than its wait for
the others (under load a thread pool serves requests unevenly, which moves the median more than the mean).

    .venv/bin/python -m bench.api_throughput [--requests 2000] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import redis
from fastapi import FastAPI
from pydantic import BaseModel, Field

from core.stores.catalog import Catalog, ConceptRecord
from services.processes import Child, free_port, python_module, start_redis, wait_for

KEY = "bench-key"
BODY = {"prompt": "a <rex> on the beach", "width": 512, "height": 512, "num_inference_steps": 30, "seed": 1}


class _Body(BaseModel):
    prompt: str = Field(min_length=1, max_length=1000)
    width: int = Field(512, ge=64, le=1024)
    height: int = Field(512, ge=64, le=1024)
    num_inference_steps: int = Field(50, ge=1, le=150)
    seed: int | None = None


def bare_app() -> FastAPI:
    """The baseline: a FastAPI endpoint that validates a body and answers, nothing else."""
    app = FastAPI()

    @app.post("/v1/generations", status_code=202)
    def create(body: _Body) -> dict[str, object]:
        return {"id": "job_x", "status": "queued", "input": body.model_dump()}

    return app


async def _drive(url: str, total: int, concurrency: int) -> list[float]:
    latencies: list[float] = []
    counter = iter(range(total))
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:

        async def one_worker() -> None:
            for _ in counter:
                started = time.perf_counter()
                response = await client.post("/v1/generations", json=BODY)
                latencies.append(time.perf_counter() - started)
                if response.status_code != 202:
                    raise RuntimeError(f"{response.status_code}: {response.text[:200]}")

        await asyncio.gather(*(one_worker() for _ in range(concurrency)))
    return latencies


def _load(url: str, total: int, concurrency: int) -> dict[str, float]:
    """Run the load from a separate process, so the client does not share the server's interpreter."""
    code = (
        "import asyncio, json, sys, time; from bench.api_throughput import _drive;"
        f"t=time.perf_counter(); lat=asyncio.run(_drive({url!r}, {total}, {concurrency}));"
        "print(json.dumps({'seconds': time.perf_counter()-t, 'latencies': lat}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    data = json.loads(out)
    lat = sorted(data["latencies"])
    return {
        "rps": len(lat) / data["seconds"],
        "mean_ms": statistics.fmean(lat) * 1000,
        "p50_ms": statistics.median(lat) * 1000,
        "p99_ms": lat[int(len(lat) * 0.99) - 1] * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        redis_child, redis_url = start_redis(Path(tmp) / "redis", persist=False)
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
            "TESSERA_STORAGE__ROOT": str(Path(tmp) / "objects"),
            "TESSERA_API_KEYS": f"bench:{KEY}",
            "TESSERA_QUOTAS__MAX_ACTIVE_JOBS": "100000000",
            "TESSERA_QUOTAS__REQUESTS_PER_MINUTE": "100000000",
            "PYTHONPATH": os.getcwd(),
        }
        servers: dict[str, tuple[Child, str]] = {}
        for name, target in (("tessera", "services.api.app:create_app"), ("bare", "bench.api_throughput:bare_app")):
            port = free_port()
            child = Child(
                name,
                python_module(
                    "uvicorn", target, "--factory", "--port", str(port), "--log-level", "warning", "--no-access-log"
                ),
                env=env,
            )
            servers[name] = (child, f"http://127.0.0.1:{port}")
            wait_for(
                lambda url=f"http://127.0.0.1:{port}": httpx.get(url + "/docs", timeout=2).status_code == 200,
                what=name,
                child=child,
            )
        try:
            loaded = _alternate(servers, args.requests, args.concurrency)
            alone = _alternate(servers, max(100, args.requests // 5), 1)
        finally:
            for child, _ in servers.values():
                child.stop()
            redis_child.stop()
    _report(f"{args.requests} POST /v1/generations, concurrency {args.concurrency}", loaded)
    _report(f"{max(100, args.requests // 5)} POST /v1/generations, one at a time", alone)


def _alternate(servers: dict[str, tuple[Child, str]], requests: int, concurrency: int) -> dict[str, dict[str, float]]:
    """Best of two runs per server, alternating, so drift on a noisy machine hits both alike."""
    results: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
    for _ in range(2):
        for name, (_, url) in servers.items():
            _load(url, max(10, requests // 10), concurrency)  # warm-up
            results[name].append(_load(url, requests, concurrency))
    return {n: max(r, key=lambda x: x["rps"]) for n, r in results.items()}


def _report(title: str, best: dict[str, dict[str, float]]) -> None:
    print(f"{title}, best of 2 alternating runs:")
    for name, r in best.items():
        print(
            f"  {name:<8} {r['rps']:8.1f} req/s   mean {r['mean_ms']:7.2f} ms   p50 {r['p50_ms']:7.2f} ms"
            f"   p99 {r['p99_ms']:7.2f} ms"
        )
    t, b = best["tessera"], best["bare"]
    print(
        f"  ratio (tessera / bare): throughput {t['rps'] / b['rps']:.2f}x, mean {t['mean_ms'] / b['mean_ms']:.2f}x, "
        f"p50 {t['p50_ms'] / b['p50_ms']:.2f}x, p99 {t['p99_ms'] / b['p99_ms']:.2f}x"
        "  (target: create-job costs at most 3x the bare endpoint)"
    )


if __name__ == "__main__":
    main()
