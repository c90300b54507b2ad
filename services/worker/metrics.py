"""Worker metrics on their own HTTP port (Prometheus text); served from a thread, so they answer while
a job runs and double as the worker's liveness probe."""

from __future__ import annotations

import logging

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server

logger = logging.getLogger(__name__)

STAGE_SECONDS = Histogram(
    "tessera_worker_stage_seconds",
    "Duration of job stages (masking, training, sampling, uploading, …).",
    ["kind", "stage"],
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 14400),
)
JOBS_FINISHED = Counter("tessera_worker_jobs_finished_total", "Jobs this worker finished.", ["kind", "status"])
FAILURES = Counter("tessera_worker_failures_total", "Failed jobs by error code.", ["kind", "code"])
GPU_MEMORY = Gauge("tessera_worker_gpu_memory_bytes", "CUDA memory of this process.", ["kind"])


def _gpu_memory() -> None:
    try:
        import torch
    except ImportError:
        return
    if torch.cuda.is_available():
        GPU_MEMORY.labels("allocated").set(torch.cuda.memory_allocated())
        GPU_MEMORY.labels("reserved").set(torch.cuda.memory_reserved())
        GPU_MEMORY.labels("peak_allocated").set(torch.cuda.max_memory_allocated())


def record_gpu_memory() -> None:
    """Refresh the GPU memory gauges (after each job; a no-op without CUDA)."""
    _gpu_memory()


def serve(port: int, host: str = "0.0.0.0") -> None:
    """Start the metrics server on ``host:port`` (port 0 = disabled)."""
    if port:
        start_http_server(port, addr=host, registry=REGISTRY)
        logger.info("worker metrics on %s:%d/metrics", host, port)
