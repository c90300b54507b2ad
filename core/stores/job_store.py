"""The job store: job records in Redis, the single source of truth for job status.

Its keys are listed (and built) in ``core.stores.job_keys``; every change also appends a ``JobEvent`` to the job's
event stream (``core.stores.job_events``), which ``read_events`` and ``aread_events`` read back typed.

``create`` can also push the job's queue message (``QueueMessage``, built by the transport) in the same atomic
script, when the broker is this Redis: one round trip stores and enqueues a job, and a job is never recorded
without its message (nor the reverse).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, cast

import redis
from redis.asyncio import Redis as AsyncRedis

from core.errors import ConflictError, InvalidTransitionError, NotFoundError, QuotaExceededError
from core.job_record import TERMINAL, JobRecord, check_transition, utcnow
from core.progress import terminal_progress
from core.resources import JobKind, JobProgress, JobStatus
from core.stores import job_keys, stats
from core.stores.index import TimeIndex, index_member
from core.stores.job_events import EVENTS_MAXLEN, FIRST, JobEvent, decode_events, event_fields
from core.tasks import QueueMessage

logger = logging.getLogger(__name__)

# What a change is, for listeners (webhooks): "start", "progress", "completed" or "requeued".
JobListener = Callable[[JobRecord | None, str, str], None]


# Creating a job: quota check, record, indexes, counter, first event and (optionally) the queue message in one
# atomic round trip.
# KEYS: record, tenant active set, tenant index, queue index, stats hash, events stream[, broker list].
# ARGV: record JSON, job id, index member, stats field, max active (-1: none), events maxlen, ttl[, message].
# Returns the job's 1-based queue position, or -1 (quota full) / -2 (id taken); both refusals write nothing, the
# message included.
_QUOTA_FULL, _EXISTS = -1, -2
_CREATE_SCRIPT = """
local max_active = tonumber(ARGV[5])
if max_active >= 0 and redis.call('SCARD', KEYS[2]) >= max_active then return -1 end
if not redis.call('SET', KEYS[1], ARGV[1], 'NX') then return -2 end
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], 0, ARGV[3])
redis.call('ZADD', KEYS[4], 0, ARGV[3])
redis.call('HINCRBY', KEYS[5], ARGV[4], 1)
redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[6], '*', 'record', ARGV[1], 'progress', '')
redis.call('EXPIRE', KEYS[6], ARGV[7])
if ARGV[8] then redis.call('LPUSH', KEYS[7], ARGV[8]) end
return redis.call('ZRANK', KEYS[4], ARGV[3]) + 1
"""


def _create_call(
    record: JobRecord, max_active: int | None, message: QueueMessage | None, ttl_seconds: int
) -> tuple[list[str], list[str | int]]:
    """The create script's keys and args for ``record`` (see ``_CREATE_SCRIPT``)."""
    keys = [
        job_keys.job(record.id),
        job_keys.tenant_active(record.tenant),
        job_keys.tenant_jobs(record.tenant),
        job_keys.queue(record.queue),
        stats.KEY,
        job_keys.events(record.id),
    ]
    args: list[str | int] = [
        record.model_dump_json(),
        record.id,
        index_member(record.created_at, record.id),
        stats.created_field(record.kind),
        -1 if max_active is None else max_active,
        EVENTS_MAXLEN,
        ttl_seconds,
    ]
    if message is not None:
        keys.append(message.key)
        args.append(message.payload)
    return keys, args


def _created(result: int, record: JobRecord, max_active: int | None) -> int:
    """The create script's answer: the queue position, or the refusal it stands for raised."""
    if result == _QUOTA_FULL:
        raise QuotaExceededError(
            f"the tenant has {max_active} queued or running jobs, the limit "
            "(quotas.max_active_jobs); retry when one finishes",
            retry_after=10,
        )
    if result == _EXISTS:
        raise ConflictError(f"job {record.id} already exists")
    return result


def event_for(new: JobStatus) -> str:
    """What a change to ``new`` is, for listeners."""
    return "start" if new == "running" else "completed" if new in TERMINAL else "requeued"


class JobStore:
    """Job records with compare-and-set transitions, progress, cancel flags, leases and queue positions.

    Args:
        client: a redis-py client.
        ttl_seconds: how long a finished job's record is kept.
        lease_seconds: how long a running job stays owned without a renewal before it counts as orphaned.
        async_client: an asyncio client of the same server, for ``aread_events`` (the API's event streams) and
            ``acreate`` (its create path).
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        ttl_seconds: int = 30 * 24 * 3600,
        lease_seconds: float = 20.0,
        async_client: AsyncRedis | None = None,
    ) -> None:
        self._r = client
        self._ar = async_client
        self.ttl_seconds = ttl_seconds
        self.lease_seconds = lease_seconds
        # Called after each committed change with (record or None for progress, job id, event).
        self.listeners: list[JobListener] = []
        # Delete the lease only if it still names this owner, atomically.
        self._release = client.register_script(
            "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
        )
        self._create = client.register_script(_CREATE_SCRIPT)
        self._acreate = None if async_client is None else async_client.register_script(_CREATE_SCRIPT)

    # ---- keys
    def _tenant_index(self, tenant: str) -> TimeIndex:
        return TimeIndex(self._r, job_keys.tenant_jobs(tenant))

    def _queue_index(self, queue: str) -> TimeIndex:
        return TimeIndex(self._r, job_keys.queue(queue))

    # ---- events
    def _append_event(self, pipe: redis.client.Pipeline, record: JobRecord, progress: JobProgress | None) -> None:
        fields = event_fields(record, progress)
        pipe.xadd(job_keys.events(record.id), fields, maxlen=EVENTS_MAXLEN, approximate=True)  # type: ignore[arg-type]
        pipe.expire(job_keys.events(record.id), self.ttl_seconds)

    def read_events(
        self, job_id: str, *, after: str = FIRST, block_ms: int | None = None, count: int = 100
    ) -> list[JobEvent]:
        """Up to ``count`` of the job's events after the one with id ``after``, oldest first.

        With ``block_ms``, wait up to that long for one when there is none yet (an empty list when none came).
        """
        reply = self._r.xread({job_keys.events(job_id): after}, count=count, block=block_ms)
        return decode_events(cast(list[Any], reply))

    async def aread_events(
        self, job_id: str, *, after: str = FIRST, block_ms: int | None = None, count: int = 100
    ) -> list[JobEvent]:
        """``read_events`` on the asyncio client, for a server that must not block its event loop."""
        if self._ar is None:
            raise RuntimeError("this JobStore has no async_client; make it with one to read events from asyncio")
        reply = await self._ar.xread({job_keys.events(job_id): after}, count=count, block=block_ms)
        return decode_events(cast(list[Any], reply))

    # ---- records

    def create(self, record: JobRecord, *, max_active: int | None = None, message: QueueMessage | None = None) -> int:
        """Store a new queued job (and index it); returns its 1-based place in its queue.

        With ``max_active``, refuse (``QuotaExceededError``) when the tenant already has that many queued or
        running jobs; the count and the insert are one atomic step (a server-side script, one round trip),
        so concurrent creates cannot overshoot.

        With ``message``, the same script pushes it onto its list once the record is stored: the job is stored and
        enqueued in one round trip, and a refused create (quota, ``ConflictError`` for a taken id) pushes nothing.
        The list must live on this Redis (the broker is the job store's server).
        """
        keys, args = _create_call(record, max_active, message, self.ttl_seconds)
        return _created(int(self._create(keys=keys, args=args)), record, max_active)

    async def acreate(
        self, record: JobRecord, *, max_active: int | None = None, message: QueueMessage | None = None
    ) -> int:
        """``create`` on the asyncio client (the API's create path, which does not leave its event loop)."""
        if self._acreate is None:
            raise RuntimeError("this JobStore has no async_client; make it with one to create jobs from asyncio")
        keys, args = _create_call(record, max_active, message, self.ttl_seconds)
        return _created(int(await self._acreate(keys=keys, args=args)), record, max_active)

    def get(self, job_id: str) -> JobRecord:
        """The record of ``job_id``; ``NotFoundError`` when there is none."""
        raw = self._r.get(job_keys.job(job_id))
        if raw is None:
            raise NotFoundError(f"no job {job_id}")
        return JobRecord.model_validate_json(raw)

    def get_for_tenant(self, tenant: str, job_id: str) -> JobRecord:
        """Like ``get``, but a job of another tenant is reported exactly as a missing one."""
        try:
            record = self.get(job_id)
        except NotFoundError:
            record = None
        if record is None or record.tenant != tenant:
            raise NotFoundError(f"no job {job_id}")
        return record

    def list_jobs(
        self, tenant: str, *, kind: JobKind | None, status: JobStatus | None, limit: int, cursor: str | None
    ) -> tuple[list[JobRecord], str | None]:
        """A tenant's jobs, newest first, filtered by kind and status."""
        found: dict[str, JobRecord] = {}

        def keep(job_id: str) -> bool:
            try:
                record = self.get(job_id)
            except NotFoundError:
                return False
            if (kind and record.kind != kind) or (status and record.status != status):
                return False
            found[job_id] = record
            return True

        ids, next_cursor = self._tenant_index(tenant).page(limit=limit, cursor=cursor, keep=keep)
        return [found[i] for i in ids], next_cursor

    def transition(
        self,
        job_id: str,
        expected: JobStatus | Iterable[JobStatus],
        new: JobStatus,
        *,
        update: Callable[[JobRecord], None] | None = None,
    ) -> JobRecord:
        """Compare-and-set the status of ``job_id`` from one of ``expected`` to ``new``.

        ``update`` may change other fields of the record in the same atomic write. Raises
        ``InvalidTransitionError`` when the job is not in an expected state (someone else moved it).
        """
        allowed = {expected} if isinstance(expected, str) else set(expected)
        key, progress_key = job_keys.job(job_id), job_keys.progress(job_id)

        def apply(pipe: redis.client.Pipeline) -> JobRecord:
            raw = pipe.get(key)
            if raw is None:
                raise NotFoundError(f"no job {job_id}")
            record = JobRecord.model_validate_json(raw)
            if record.status not in allowed:
                raise InvalidTransitionError(f"job {job_id}: is {record.status}, expected {sorted(allowed)}")
            check_transition(job_id, record.status, new)
            old = record.status
            record.status = new
            now = utcnow()
            if new == "running" and record.started_at is None:
                record.started_at = now
            if new in TERMINAL:
                record.completed_at = now
            if update is not None:
                update(record)
            final = None
            if new in TERMINAL and old == "running":
                # The progress a finished job shows everywhere (GET, the terminal SSE event, webhook bodies), kept as
                # long as the record: succeeded is DONE, failed and canceled keep what they reached.
                last = cast(bytes | None, pipe.get(progress_key))
                final = terminal_progress(new, None if last is None else JobProgress.model_validate_json(last))
            pipe.multi()
            pipe.set(key, record.model_dump_json(), ex=self.ttl_seconds if new in TERMINAL else None)
            queue_index = self._queue_index(record.queue)
            if old == "queued":
                queue_index.remove(record.created_at, record.id, pipe)
            if new == "queued":
                queue_index.add(record.created_at, record.id, pipe)
            if new == "running":
                pipe.sadd(job_keys.RUNNING, job_id)
            else:
                pipe.srem(job_keys.RUNNING, job_id)
            if new == "queued":
                # A job handed back runs again from its first stage: the last run's progress is not its progress.
                pipe.delete(progress_key)
            if new in TERMINAL:
                if final is None:
                    pipe.delete(progress_key)
                else:
                    pipe.set(progress_key, final.model_dump_json(), ex=self.ttl_seconds)
                for other in (job_keys.cancel(job_id), job_keys.lease(job_id)):
                    pipe.expire(other, 3600)
                pipe.srem(job_keys.tenant_active(record.tenant), job_id)
                stats.count_finished(pipe, record.kind, new)
                if record.started_at is not None and record.completed_at is not None:
                    run = (record.completed_at - record.started_at).total_seconds()
                    stats.observe(pipe, "run_seconds", record.kind, run)
            if new == "running" and old == "queued" and record.started_at is not None and record.redeliveries == 0:
                stats.observe(
                    pipe, "queue_seconds", record.kind, (record.started_at - record.created_at).total_seconds()
                )
            self._append_event(pipe, record, final)
            return record

        with self._r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key, progress_key)  # type: ignore[no-untyped-call]
                    record = apply(pipe)
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue  # the record changed between read and write: read it again
        self._notify(record, record.id, event_for(new))
        return record

    def _notify(self, record: JobRecord | None, job_id: str, event: str) -> None:
        for listener in self.listeners:
            try:
                listener(record, job_id, event)
            except Exception:
                # A listener (webhook bookkeeping) must never undo or block a committed state change.
                logger.exception("job listener failed for %s (%s)", job_id, event)

    # ---- progress
    def report_progress(self, job_id: str, progress: JobProgress) -> bool:
        """Record the progress of a running job (``core.progress.ProgressTracker`` computes it) and append it to the
        job's event stream; returns whether it was written.

        Only a running job takes progress: once the job ended (its final progress is written by ``transition``) or
        went back to the queue, a late report is dropped instead of overwriting that.
        """
        key, progress_key = job_keys.job(job_id), job_keys.progress(job_id)
        with self._r.pipeline() as pipe:
            while True:
                try:
                    # The status check and the write are one step: a transition in between makes this try again.
                    pipe.watch(key)  # type: ignore[no-untyped-call]
                    raw = cast(bytes | None, pipe.get(key))
                    record = None if raw is None else JobRecord.model_validate_json(raw)
                    if record is None or record.status != "running":
                        pipe.reset()
                        return False
                    pipe.multi()
                    pipe.set(progress_key, progress.model_dump_json(), ex=self.ttl_seconds)
                    self._append_event(pipe, record, progress)
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue
        self._notify(None, job_id, "progress")
        return True

    def get_progress(self, job_id: str) -> JobProgress | None:
        """The job's progress: the latest report while it runs, the final one once it ended, None before it ran."""
        raw = self._r.get(job_keys.progress(job_id))
        return None if raw is None else JobProgress.model_validate_json(raw)

    # ---- cancellation
    def request_cancel(self, job_id: str) -> None:
        """Flag the job canceled: a worker running it stops at its next step (``cancel_requested``)."""
        self._r.set(job_keys.cancel(job_id), "1", ex=self.ttl_seconds)

    def cancel_requested(self, job_id: str) -> bool:
        """Whether a client asked to cancel the job."""
        return bool(self._r.exists(job_keys.cancel(job_id)))

    # ---- queue positions
    def queue_position(self, record: JobRecord) -> int | None:
        """1-based place of a queued job among the queued jobs of its queue, oldest first."""
        if record.status != "queued":
            return None
        member = index_member(record.created_at, record.id)
        rank = cast(int | None, self._r.zrank(self._queue_index(record.queue).key, member))
        return None if rank is None else rank + 1

    def queue_depth(self, queue: str) -> int:
        return int(self._r.zcard(self._queue_index(queue).key))

    def queued_before(self, queue: str, before: datetime) -> list[str]:
        """Ids of the jobs queued on ``queue`` that were created before ``before``, oldest first."""
        upper = "(" + index_member(before, "")
        members = cast(list[bytes], self._r.zrangebylex(self._queue_index(queue).key, "-", upper))
        return [raw.decode().split(":", 1)[1] for raw in members]

    # ---- leases: who runs a job, and whether they are still alive
    def acquire_lease(self, job_id: str, owner: str) -> bool:
        """Take the lease of ``job_id`` unless someone holds it."""
        return bool(self._r.set(job_keys.lease(job_id), owner, px=int(self.lease_seconds * 1000), nx=True))

    def release_lease(self, job_id: str, owner: str) -> None:
        """Drop the lease if ``owner`` holds it."""
        key = job_keys.lease(job_id)
        self._release(keys=[key], args=[owner])

    def renew_lease(self, job_id: str, owner: str) -> bool:
        """Extend the lease if ``owner`` still holds it."""
        key = job_keys.lease(job_id)
        with self._r.pipeline() as pipe:
            try:
                pipe.watch(key)  # type: ignore[no-untyped-call]
                if pipe.get(key) != owner.encode():
                    return False
                pipe.multi()
                pipe.pexpire(key, int(self.lease_seconds * 1000))
                pipe.execute()
                return True
            except redis.WatchError:
                return False

    def lease_alive(self, job_id: str) -> bool:
        return bool(self._r.exists(job_keys.lease(job_id)))

    def orphaned_jobs(self) -> list[str]:
        """Running jobs whose lease expired: their worker died without finishing them."""
        ids = [raw.decode() for raw in cast(set[bytes], self._r.smembers(job_keys.RUNNING))]
        return [job_id for job_id in ids if not self.lease_alive(job_id)]
