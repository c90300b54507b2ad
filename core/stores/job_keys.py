"""The Redis keys of jobs, in one place: the job store writes them, and whatever else keeps state per job (the
webhook notifier's throttle) takes its key from here.

Keys (prefix ``tessera:``):
- ``job:{id}``               JSON ``JobRecord``
- ``job:{id}:progress``      JSON ``JobProgress`` of the job (written often while it runs, kept apart from the
                             record; final once the job ends, and then kept as long as the record)
- ``job:{id}:cancel``        set when a client asked to cancel
- ``job:{id}:lease``         owner of a running job; expires unless the owner renews it (worker liveness)
- ``job:{id}:events``        stream of job snapshots, one entry per change (``core.stores.job_events``)
- ``job:{id}:progress-hook`` set for a second after a progress webhook was sent (one per second per job)
- ``tenant:{t}:jobs``        time index for listing
- ``tenant:{t}:active``      queued and running jobs of a tenant (quota)
- ``queue:{q}``              time index of queued jobs, for queue positions
- ``running``                set of running job ids, scanned for expired leases
"""

from __future__ import annotations

PREFIX = "tessera:"
RUNNING = f"{PREFIX}running"


def job(job_id: str, suffix: str = "") -> str:
    """The record's key, or with ``suffix`` (``":progress"``, ``":cancel"``…) one of the job's other keys."""
    return f"{PREFIX}job:{job_id}{suffix}"


def progress(job_id: str) -> str:
    """The job's latest (or final) progress."""
    return job(job_id, ":progress")


def cancel(job_id: str) -> str:
    """The job's cancel flag."""
    return job(job_id, ":cancel")


def lease(job_id: str) -> str:
    """The owner of the running job."""
    return job(job_id, ":lease")


def events(job_id: str) -> str:
    """The job's event stream."""
    return job(job_id, ":events")


def progress_hook(job_id: str) -> str:
    """The throttle of the job's progress webhooks."""
    return job(job_id, ":progress-hook")


def tenant_jobs(tenant: str) -> str:
    """The time index of a tenant's jobs."""
    return f"{PREFIX}tenant:{tenant}:jobs"


def tenant_active(tenant: str) -> str:
    """The set of a tenant's queued and running jobs."""
    return f"{PREFIX}tenant:{tenant}:active"


def queue(name: str) -> str:
    """The time index of the jobs queued on ``name``."""
    return f"{PREFIX}queue:{name}"
