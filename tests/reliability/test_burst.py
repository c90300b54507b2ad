"""A bounded burst from a second process on loopback: 5 tenants, at least 500 creates in under a minute, two
workers: every accepted job ends exactly once, quotas hold per tenant, and the create latency is reported."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from core.stores.job_store import JobStore
from services.embedded import Stack
from tests.reliability import ledger

pytestmark = pytest.mark.slow

TENANTS = 5
PER_TENANT = 110
MAX_ACTIVE = 12
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    keys = ",".join(f"tenant-{i}:key-{i}" for i in range(TENANTS))
    s = Stack(
        data_dir=tmp_path_factory.mktemp("burst"),
        preset="tiny",
        api_keys=keys,
        extra_env={
            "OMP_NUM_THREADS": "1",
            "TESSERA_QUOTAS__MAX_ACTIVE_JOBS": str(MAX_ACTIVE),
            "TESSERA_QUOTAS__REQUESTS_PER_MINUTE": "100000",
        },
    )
    with s:
        s.start_worker()  # two GPU workers
        yield s


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def test_a_burst_of_creates_loses_nothing_and_holds_every_quota(stack: Stack) -> None:
    r = redis.Redis.from_url(stack.redis_url)
    peak = dict.fromkeys(range(TENANTS), 0)
    stop = threading.Event()

    def watch() -> None:  # the most queued-or-running jobs each tenant had at once
        while not stop.is_set():
            for i in range(TENANTS):
                peak[i] = max(peak[i], int(r.scard(f"tessera:tenant:tenant-{i}:active")))
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    keys = ",".join(f"key-{i}" for i in range(TENANTS))
    burst = subprocess.run(
        [sys.executable, "-m", "tests.reliability.burst", stack.url, keys, str(PER_TENANT)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert burst.returncode == 0, burst.stderr
    report = json.loads(burst.stdout)
    rows, wall = report["rows"], report["seconds"]
    accepted = [row for row in rows if row[1] == 202]
    refused = [row for row in rows if row[1] != 202]
    latencies = [row[4] for row in rows]
    p50, p99 = _percentile(latencies, 0.5), _percentile(latencies, 0.99)
    print(
        f"burst: {len(rows)} creates in {wall:.1f} s, {len(accepted)} accepted, {len(refused)} refused (quota); "
        f"create latency p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms"
    )

    # Every accepted job ends exactly once; the refusals are the tenant quota, nothing else.
    ids = [row[3] for row in accepted]
    store = JobStore(r)
    deadline = time.monotonic() + 600
    for job_id in ids:
        while time.monotonic() < deadline and store.get(job_id).status in ("queued", "running"):
            time.sleep(0.1)
    stop.set()
    watcher.join()
    finals = [store.get(job_id) for job_id in ids]
    lost = sum(1 for f in finals if f.status != "succeeded")
    outputs = [image["file_id"] for f in finals for image in (f.output or {}).get("images", [])]
    stored = [p.name for p in (stack.data_dir / "objects" / "objects" / "outputs").rglob("*") if p.is_file()]
    doubled = (len(outputs) - len(set(outputs))) + len(set(stored) - set(outputs))
    quota_ok = all(row[2] == "quota_exceeded" for row in refused) and max(peak.values()) <= MAX_ACTIVE
    ok = len(rows) >= 500 and wall < 60 and lost == 0 and doubled == 0 and quota_ok and len(ids) == len(set(ids))
    ledger.record(
        "burst",
        f"{len(rows)} creates, p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms",
        ok=ok,
        jobs=len(rows),
        lost=lost,
        doubled=doubled,
    )
    assert len(rows) >= 500 and wall < 60, (len(rows), wall)
    assert lost == 0 and doubled == 0, (lost, doubled)
    assert quota_ok, (peak, {row[2] for row in refused})
    assert all(sum(1 for row in accepted if row[0] == i) >= MAX_ACTIVE for i in range(TENANTS))
    assert len(outputs) == len(ids)
