"""A bounded burst of job creates from its own process: ``python -m tests.reliability.burst URL KEYS N``.

Sends ``N`` creates per key (``KEYS``: comma-separated API keys) from 16 threads, interleaving the keys, and prints
one JSON object: per request ``[key index, status, code, job id, seconds]``, and the wall time.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

BODY = {"prompt": "a red star on the left", "num_inference_steps": 1, "width": 64, "height": 64}


def main(argv: list[str]) -> None:
    url, keys, per_key = argv[0], argv[1].split(","), int(argv[2])
    local = threading.local()

    def create(index: int) -> list[object]:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=url, timeout=60)
        key = index % len(keys)
        started = time.perf_counter()
        r = local.client.post(
            "/v1/generations", json={**BODY, "seed": index}, headers={"Authorization": f"Bearer {keys[key]}"}
        )
        seconds = time.perf_counter() - started
        body = r.json()
        return [key, r.status_code, body.get("code"), body.get("id") if r.status_code == 202 else None, seconds]

    started = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        rows = list(pool.map(create, range(per_key * len(keys))))
    print(json.dumps({"rows": rows, "seconds": time.perf_counter() - started}))


if __name__ == "__main__":
    main(sys.argv[1:])
