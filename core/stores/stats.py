"""Job counters and latency histograms kept in Redis, so every API replica exports the same numbers.

Counters are written in the same MULTI as the job transition they count; ``snapshot`` reads them
back for the Prometheus collector of the API.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import cast

import redis

KEY = "tessera:stats"
# Seconds; covers a fast generation (sub-second) up to a long training (hours).
BUCKETS: tuple[float, ...] = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, math.inf)


def created_field(kind: str) -> str:
    """The counter of jobs of ``kind`` ever created (incremented by the job store's create script)."""
    return f"created|{kind}"


def count_finished(pipe: redis.client.Pipeline, kind: str, status: str) -> None:
    pipe.hincrby(KEY, f"finished|{kind}|{status}", 1)


def observe(pipe: redis.client.Pipeline, histogram: str, kind: str, seconds: float) -> None:
    """Add one observation to a cumulative histogram (Prometheus semantics)."""
    for bound in BUCKETS:
        if seconds <= bound:
            pipe.hincrby(KEY, f"hist|{histogram}|{kind}|{bound}", 1)
    pipe.hincrbyfloat(KEY, f"hist|{histogram}|{kind}|sum", seconds)


@dataclass
class StatsSnapshot:
    created: dict[str, int] = field(default_factory=dict)
    finished: dict[tuple[str, str], int] = field(default_factory=dict)
    # (histogram, kind) -> ({bound: cumulative count}, sum)
    histograms: dict[tuple[str, str], tuple[dict[float, int], float]] = field(default_factory=dict)


def snapshot(client: redis.Redis) -> StatsSnapshot:
    raw = cast(dict[bytes, bytes], client.hgetall(KEY))
    snap = StatsSnapshot()
    for key_b, value_b in raw.items():
        parts = key_b.decode().split("|")
        if parts[0] == "created":
            snap.created[parts[1]] = int(value_b)
        elif parts[0] == "finished":
            snap.finished[(parts[1], parts[2])] = int(value_b)
        elif parts[0] == "hist":
            buckets, total = snap.histograms.get((parts[1], parts[2]), ({}, 0.0))
            if parts[3] == "sum":
                total = float(value_b)
            else:
                buckets[float(parts[3])] = int(value_b)
            snap.histograms[(parts[1], parts[2])] = (buckets, total)
    return snap
