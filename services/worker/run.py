"""One run of one job on a worker: claim it, keep its lease alive, report progress, record the outcome.

Claiming is compare-and-set ``queued -> running``: a redelivered message whose job is already running
elsewhere or finished does nothing. While the job runs a heartbeat renews its lease; if the process
dies, the lease expires and the reaper (``services.worker.reaper``) hands the job back to the queue. A worker told
to stop (SIGTERM) hands its job back itself at the next step boundary (``begin_shutdown``).
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from core.errors import InvalidTransitionError, JobCanceledError, NotFoundError, ServiceError
from core.job_record import JobRecord
from core.progress import Progress, ProgressTracker, StagePlan, StepCallback, stage_plan
from core.resources import JobError, JobProgress
from services import logs
from services.worker import metrics
from services.worker.context import WorkerContext

logger = logging.getLogger(__name__)

# Progress writes and cancel checks hit Redis at most this often per job (steps can take milliseconds). Stage starts
# and ends and a stage's first and last steps are written regardless, so even a job shorter than this shows a poller
# how far it got.
REPORT_INTERVAL_S = 0.2


class HandedBack(JobCanceledError):
    """Raised at a step boundary once the worker is shutting down: the job goes back to the queue (a cancellation
    as far as the pipelines are concerned: they clean up the same way)."""

    code = "handed_back"


_shutting_down = threading.Event()


def begin_shutdown() -> None:
    """The worker was told to stop: running jobs stop at their next step and go back to the queue."""
    _shutting_down.set()


class JobRun:
    """A claimed job: stage timing, progress reports and cooperative cancellation."""

    def __init__(self, ctx: WorkerContext, record: JobRecord) -> None:
        self.ctx = ctx
        self.record = record
        self.stages: dict[str, float] = {}
        self._last_report = 0.0
        self._last_cancel_check = 0.0
        self._last_written: tuple[str, int, int, float] | None = None
        # Every stage the kind can run, until the body says which it will (``plan``).
        self.progress = ProgressTracker(stage_plan(record.kind, skip=()))

    def plan(self, plan: StagePlan) -> None:
        """Declare the stages this job will run (before the first one), so that the overall fraction weighs only
        those; see ``core.progress.training_plan`` and ``generation_plan``."""
        self.progress = ProgressTracker(plan)

    def _write(self, value: JobProgress, *, force: bool) -> None:
        """Store ``value`` when forced or when the last write is ``REPORT_INTERVAL_S`` old; never the same twice."""
        now = time.monotonic()
        same = (value.stage, value.step, value.total_steps, value.fraction)
        if same == self._last_written or (not force and now - self._last_report < REPORT_INTERVAL_S):
            return
        self._last_report, self._last_written = now, same
        self.ctx.jobs.report_progress(self.record.id, value)

    def flush_progress(self) -> None:
        """Write the latest progress a throttled report held back (a job that stops keeps what it reached)."""
        self._write(self.progress.snapshot(), force=True)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a stage into ``metrics.stages``; report its start and, when it completes, its end."""
        started = time.time()
        self._write(self.progress.begin(name), force=True)
        try:
            yield
        finally:
            elapsed = time.time() - started
            self.stages[name] = round(self.stages.get(name, 0.0) + elapsed, 3)
            metrics.STAGE_SECONDS.labels(self.record.kind, name).observe(elapsed)
        self._write(self.progress.end(name), force=True)

    def check_cancel(self, *, force: bool = True) -> None:
        """Raise ``JobCanceledError`` when a client asked to cancel this job, ``HandedBack`` when the worker is
        shutting down."""
        if _shutting_down.is_set():
            raise HandedBack(f"job {self.record.id} handed back: the worker is shutting down")
        now = time.monotonic()
        if not force and now - self._last_cancel_check < REPORT_INTERVAL_S:
            return
        self._last_cancel_check = now
        if self.ctx.jobs.cancel_requested(self.record.id):
            raise JobCanceledError(f"job {self.record.id} canceled")

    def reporter(self, stage: str) -> StepCallback:
        """A pipeline callback: records progress (throttled; the first and last steps always) and checks for
        cancel."""

        def on_step(progress: Progress) -> None:
            value = self.progress.step(stage, progress.step, progress.total_steps)
            self._write(value, force=progress.step <= 1 or progress.step >= progress.total_steps)
            self.check_cancel(force=False)

        return on_step


class _Heartbeat(threading.Thread):
    def __init__(self, ctx: WorkerContext, job_id: str) -> None:
        super().__init__(name=f"lease-{job_id}", daemon=True)
        self._ctx, self._job_id = ctx, job_id
        self._stop = threading.Event()

    def run(self) -> None:
        interval = self._ctx.jobs.lease_seconds / 3
        while not self._stop.wait(interval):
            try:
                if not self._ctx.jobs.renew_lease(self._job_id, self._ctx.worker_id):
                    logger.warning("lost the lease of job %s", self._job_id)
            except Exception:
                logger.exception("lease renewal of job %s failed", self._job_id)

    def stop(self) -> None:
        self._stop.set()


def _claim(ctx: WorkerContext, job_id: str) -> JobRecord | None:
    try:
        record = ctx.jobs.get(job_id)
    except NotFoundError:
        logger.warning("job %s does not exist (expired?); message dropped", job_id)
        return None
    if record.status != "queued":
        logger.info("job %s is %s; nothing to do for this delivery", job_id, record.status)
        return None
    if ctx.jobs.cancel_requested(job_id):
        try:
            ctx.jobs.transition(job_id, "queued", "canceled")
        except InvalidTransitionError:
            pass
        return None
    # Take the lease first (only if nobody holds it), then the status: the reaper never sees a
    # running job without a lease.
    if not ctx.jobs.acquire_lease(job_id, ctx.worker_id):
        logger.info("job %s is leased by another worker", job_id)
        return None
    try:
        return ctx.jobs.transition(job_id, "queued", "running")
    except InvalidTransitionError:
        ctx.jobs.release_lease(job_id, ctx.worker_id)
        return None


def execute(
    ctx: WorkerContext,
    job_id: str,
    body: Callable[[JobRun], dict[str, Any]],
    *,
    on_abort: Callable[[JobRecord], None] | None = None,
) -> None:
    """Run ``body`` for ``job_id`` if this delivery may claim it, and record how it ended.

    ``body`` returns the job's output. ``on_abort`` undoes side effects when the job fails or is canceled.
    """
    token = logs.job_id.set(job_id)
    try:
        _execute(ctx, job_id, body, on_abort)
    finally:
        logs.job_id.reset(token)


def _execute(
    ctx: WorkerContext,
    job_id: str,
    body: Callable[[JobRun], dict[str, Any]],
    on_abort: Callable[[JobRecord], None] | None,
) -> None:
    record = _claim(ctx, job_id)
    if record is None:
        return
    heartbeat = _Heartbeat(ctx, job_id)
    heartbeat.start()
    run = JobRun(ctx, record)
    status, output, error = "succeeded", None, None
    try:
        output = body(run)
    except HandedBack:
        status = "queued"
    except JobCanceledError:
        status = "canceled"
    except ServiceError as exc:
        status, error = "failed", JobError(code=exc.code, message=exc.message)
        logger.warning("job %s failed: %s", job_id, exc.message)
    except Exception as exc:
        status = "failed"
        error = _unexpected(exc, record)
        if error.code == "out_of_memory":
            logger.warning("job %s ran out of memory: %s", job_id, exc)
            _free_memory()
        else:
            logger.exception("job %s failed unexpectedly", job_id)
    finally:
        heartbeat.stop()

    if status == "queued":
        _hand_back(ctx, record)
        return

    def update(r: JobRecord) -> None:
        r.output, r.error = output, error
        r.stages = run.stages

    try:
        if status != "succeeded":
            run.flush_progress()
        if status != "succeeded" and on_abort is not None:
            on_abort(record)
        ctx.jobs.transition(job_id, "running", status, update=update)  # type: ignore[arg-type]
        metrics.JOBS_FINISHED.labels(record.kind, status).inc()
        if error is not None:
            metrics.FAILURES.labels(record.kind, error.code).inc()
    except InvalidTransitionError as exc:
        logger.warning("job %s could not be finished as %s: %s", job_id, status, exc)
    finally:
        ctx.jobs.release_lease(job_id, ctx.worker_id)
        metrics.record_gpu_memory()


def _hand_back(ctx: WorkerContext, record: JobRecord) -> None:
    """Put a job this worker stopped back in the queue (not counted as a redelivery: nobody died)."""
    try:
        requeued = ctx.jobs.transition(record.id, "running", "queued")
        if ctx.enqueue is not None:
            ctx.enqueue(requeued)
        # Without a way to send it, the reaper's stranded-job pass sends it once it has waited long enough.
        logger.warning("job %s handed back to the queue: this worker is shutting down", record.id)
    except InvalidTransitionError as exc:
        logger.warning("job %s could not be handed back: %s", record.id, exc)
    finally:
        ctx.jobs.release_lease(record.id, ctx.worker_id)


def _is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, Python's MemoryError, and the CPU allocator's "can't allocate memory"."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)


def _unexpected(exc: Exception, record: JobRecord) -> JobError:
    """The error a job gets for an exception nobody raised on purpose: ``out_of_memory`` with what to lower, else
    ``internal_error`` without details (the operator's logs have them)."""
    if _is_out_of_memory(exc):
        lower = (
            "fewer or smaller training images, or a smaller batch_size"
            if record.kind == "training"
            else "a smaller width and height, fewer num_outputs, or fewer concepts"
        )
        return JobError(code="out_of_memory", message=f"the worker ran out of memory for this job; try {lower}")
    return JobError(
        code="internal_error", message=f"internal error ({type(exc).__name__}); the operator's logs have the details"
    )


def _free_memory() -> None:
    """Return what a failed job held (its tensors are garbage now) so the next job starts with the memory free."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # a webhooks-only worker has no torch
        pass
