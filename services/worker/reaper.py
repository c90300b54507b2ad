"""Hands back to the queue the running jobs whose worker died (their lease expired).

Every worker runs one reaper thread; compare-and-set makes concurrent reapers safe (one wins).
A job handed back more than ``max_redeliveries`` times fails with ``worker_lost`` instead of looping.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from core.errors import InvalidTransitionError, NotFoundError
from core.jobs import JobRecord
from core.schemas import JobError
from core.stores.jobs import JobStore

logger = logging.getLogger(__name__)


def _count_redelivery(record: JobRecord) -> None:
    record.redeliveries += 1


def _set_error(error: JobError) -> Callable[[JobRecord], None]:
    def update(record: JobRecord) -> None:
        record.error = error

    return update


def reap_orphans(jobs: JobStore, enqueue: Callable[[JobRecord], None], *, max_redeliveries: int) -> list[str]:
    """Re-queue (or fail) every orphaned running job once; returns the ids handled."""
    handled = []
    for job_id in jobs.orphaned_jobs():
        try:
            record = jobs.get(job_id)
        except NotFoundError:
            continue
        try:
            if record.redeliveries >= max_redeliveries:
                error = JobError(
                    code="worker_lost",
                    message=f"the worker running this job died {record.redeliveries + 1} times; giving up",
                )
                jobs.transition(job_id, "running", "failed", update=_set_error(error))
            else:
                requeued = jobs.transition(job_id, "running", "queued", update=_count_redelivery)
                enqueue(requeued)
                logger.warning("job %s lost its worker; queued again (redelivery %d)", job_id, requeued.redeliveries)
            handled.append(job_id)
        except InvalidTransitionError:
            continue  # another reaper, or the worker itself, got there first
    return handled


class Reaper(threading.Thread):
    """Runs ``reap_orphans`` every half lease."""

    def __init__(self, jobs: JobStore, enqueue: Callable[[JobRecord], None], *, max_redeliveries: int) -> None:
        super().__init__(name="tessera-reaper", daemon=True)
        self._jobs, self._enqueue, self._max = jobs, enqueue, max_redeliveries
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.wait(self._jobs.lease_seconds / 2):
            try:
                reap_orphans(self._jobs, self._enqueue, max_redeliveries=self._max)
            except Exception:
                logger.exception("reaper pass failed")

    def stop(self) -> None:
        self._stop.set()
