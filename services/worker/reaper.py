"""Keeps every recorded job runnable: hands back the running jobs whose worker died (their lease expired), and
sends again the message of queued jobs the broker no longer holds.

Every worker runs one reaper thread; compare-and-set makes concurrent reapers safe (one wins).
A job handed back more than ``max_redeliveries`` times fails with ``worker_lost`` instead of looping.

A queued job can lose its message: a job whose message was sent on its own (a requeue, an injected transport)
when Redis restarted between the record's write and the message's (each is persisted on its own) or the sender died
between the two, or a message Redis lost otherwise (a new job's record and message are written by one script, so
those two go together). The record is the source of truth, so such a job is sent again once it has waited
``stranded_after`` with no message in the broker. A second message for one job is
harmless: a worker claims a job only while it is queued and only with its lease (``services.worker.run``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import timedelta

from core.errors import InvalidTransitionError, NotFoundError
from core.job_record import JobRecord, utcnow
from core.resources import JobError
from core.stores.job_store import JobStore
from core.tasks import GPU_QUEUES

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


def resend_stranded(
    jobs: JobStore,
    held: Callable[[str], set[str]],
    enqueue: Callable[[JobRecord], None],
    *,
    stranded_after: float,
    queues: Sequence[str] = GPU_QUEUES,
) -> list[str]:
    """Send again the message of every job queued for more than ``stranded_after`` seconds that the broker does not
    hold (``held(queue)``: the task ids it holds for a queue); returns the ids sent."""
    sent = []
    cutoff = utcnow() - timedelta(seconds=stranded_after)
    for queue in queues:
        waiting = jobs.queued_before(queue, cutoff)
        if not waiting:
            continue
        present = held(queue)
        for job_id in waiting:
            if job_id in present:
                continue
            try:
                record = jobs.get(job_id)
            except NotFoundError:
                continue
            if record.status != "queued":
                continue
            enqueue(record)
            logger.warning("job %s was queued with no message in the broker; sent it again", job_id)
            sent.append(job_id)
    return sent


class Reaper(threading.Thread):
    """Runs ``reap_orphans`` every half lease and ``resend_stranded`` every half ``stranded_after``."""

    def __init__(
        self,
        jobs: JobStore,
        enqueue: Callable[[JobRecord], None],
        *,
        max_redeliveries: int,
        held: Callable[[str], set[str]] | None = None,
        stranded_after: float = 60.0,
    ) -> None:
        super().__init__(name="tessera-reaper", daemon=True)
        self._jobs, self._enqueue, self._max = jobs, enqueue, max_redeliveries
        self._held, self._stranded_after = held, stranded_after
        self._stop = threading.Event()

    def run(self) -> None:
        last_stranded_pass = time.monotonic()
        while not self._stop.wait(self._jobs.lease_seconds / 2):
            try:
                reap_orphans(self._jobs, self._enqueue, max_redeliveries=self._max)
                # The stranded pass reads every waiting message of a long queue: once per half grace period is
                # enough to send a lost one within 1.5x the grace, and keeps a long queue from being re-read by
                # every worker twice a lease.
                if self._held is not None and time.monotonic() - last_stranded_pass >= self._stranded_after / 2:
                    last_stranded_pass = time.monotonic()
                    resend_stranded(self._jobs, self._held, self._enqueue, stranded_after=self._stranded_after)
            except Exception:
                logger.exception("reaper pass failed")

    def stop(self) -> None:
        self._stop.set()
